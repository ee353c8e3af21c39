//! librdkafka's client-level errors — the brokers refuse sluice's credentials, a TLS handshake
//! fails, an ACL refuses, no broker answers — counted by kind for
//! `sluice_kafka_client_errors_total`, logged with what to check, and the newest kept for the
//! service's status line.
//!
//! Process-wide: every client of the process reaches the same brokers with the same settings,
//! and the contexts that hear of these errors (start-up discovery's, the shards' consumers',
//! the producers', the readers') are made in places that share nothing else. Tests that run
//! several instances in one process see their sum.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use rdkafka::error::KafkaError as RdError;
use rdkafka::types::RDKafkaErrorCode as C;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientErrorKind {
    /// SASL refused (wrong password, unknown user, a mechanism the brokers do not offer).
    Authentication,
    /// An ACL refuses sluice's principal a topic, the group or a transactional id.
    Authorization,
    /// The TLS handshake failed (an untrusted or expired certificate, a plaintext listener).
    Tls,
    /// No connection: refused, reset, a name that does not resolve, every broker down.
    Transport,
    /// Another client took over this instance's identity in the cluster: a producer with the
    /// same transactional.id, or a consumer with the same group.instance.id. Fatal for the
    /// client it hits.
    Fenced,
    Other,
}

impl ClientErrorKind {
    pub const ALL: [Self; 6] = [
        Self::Authentication,
        Self::Authorization,
        Self::Tls,
        Self::Transport,
        Self::Fenced,
        Self::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Authentication => "authentication",
            Self::Authorization => "authorization",
            Self::Tls => "tls",
            Self::Transport => "transport",
            Self::Fenced => "fenced",
            Self::Other => "other",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn of_code(code: C) -> Self {
        match code {
            C::Authentication
            | C::SaslAuthenticationFailed
            | C::UnsupportedSASLMechanism
            | C::IllegalSASLState => Self::Authentication,
            C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::DelegationTokenAuthorizationFailed => Self::Authorization,
            C::SSL => Self::Tls,
            C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::Resolve
            | C::NetworkException
            | C::OperationTimedOut
            | C::RequestTimedOut => Self::Transport,
            C::Fenced | C::ProducerFenced | C::FencedInstanceId => Self::Fenced,
            _ => Self::Other,
        }
    }

    pub fn of(error: &RdError) -> Self {
        error
            .rdkafka_error_code()
            .map_or(Self::Other, Self::of_code)
    }

    /// What an operator checks, for the log and the start-up error.
    pub fn advice(self) -> &'static str {
        match self {
            Self::Authentication => "the brokers refuse sluice's credentials: check security.protocol, sasl.mechanisms, sasl.username and sasl.password in [kafka.consumer] and [kafka.producer]",
            Self::Authorization => "an ACL refuses sluice's principal: it needs Describe and Read on the input topics, Read on the group, Write on the output topics and, with exactly_once, Write on its transactional ids",
            Self::Tls => "the TLS handshake fails: check ssl.ca.location (the CA that signed the brokers' certificates), the client certificate if the brokers ask for one, and that the listener speaks TLS (security.protocol)",
            Self::Transport => "no connection to the brokers: are they running, and is ingest.kafka.brokers right?",
            Self::Fenced => FENCED,
            Self::Other => "librdkafka reports it and retries",
        }
    }
}

/// What a fenced client means, and what to change (either client: the kind's advice).
pub const FENCED: &str = "another process took over this instance's identity in the Kafka cluster — a producer with the same transactional.id (egress.kafka.transactional_id_prefix, ingest.kafka.instance_id, the shard) or a consumer with the same group.instance.id (ingest.kafka.instance_id): another sluice runs with this one's instance_id and prefix (each instance needs its own, or the two fence each other at every restart), or, for a producer, this one's transaction outlived egress.kafka.transaction_timeout_ms (a stall) and the broker moved its epoch on";

/// A producer fenced: its transactional.id taken over, or its epoch moved on.
pub const FENCED_PRODUCER: &str = "another producer took over this shard's transactional.id (egress.kafka.transactional_id_prefix, ingest.kafka.instance_id, the shard): another sluice runs with this one's instance_id and prefix (each instance needs its own, or the two fence each other at every restart), or this one's transaction outlived egress.kafka.transaction_timeout_ms (a stall) and the broker moved its epoch on";

/// A static member fenced: another consumer joined with its group.instance.id.
pub const FENCED_MEMBER: &str = "another consumer joined ingest.kafka.group with this shard's group.instance.id (ingest.kafka.instance_id-SHARD): another sluice runs with this one's instance_id (each instance needs its own, or the two fence each other at every restart), or another client uses that id";

/// What a fencing with `code` means (None: not a fencing).
fn fenced_advice(code: C) -> Option<&'static str> {
    match code {
        C::FencedInstanceId => Some(FENCED_MEMBER),
        C::Fenced | C::ProducerFenced => Some(FENCED_PRODUCER),
        _ => None,
    }
}

/// A client's fatal error (librdkafka's `fatal_error`), for the stop it causes: its code and
/// words, and for a fencing what it means.
pub fn fatal_error_text(client: &str, code: C, reason: &str) -> String {
    let advice = fenced_advice(code).map_or(String::new(), |a| format!(" ({a})"));
    format!("Kafka {client}: fatal error {code:?}: {reason}{advice}")
}

/// What to grant when an ACL refuses the consumer group.
pub const GROUP_REFUSED: &str = "an ACL refuses sluice's principal its consumer group (ingest.kafka.group): grant it Describe and Read on the group (the consumer joins or commits to it; an exactly_once transaction commits the consumed offsets to it)";

/// What to check for `error`: for an ACL's refusal, what the refused resource needs (a
/// topic, the group, the transactional ids, the cluster); else its kind's advice.
pub fn advice_for(error: &RdError) -> &'static str {
    match error.rdkafka_error_code() {
        Some(C::GroupAuthorizationFailed) => GROUP_REFUSED,
        Some(C::TransactionalIdAuthorizationFailed) => "an ACL refuses sluice's principal its transactional ids: grant it Describe and Write on the transactional ids starting with egress.kafka.transactional_id_prefix (a prefixed ACL)",
        Some(C::ClusterAuthorizationFailed) => "an ACL refuses sluice's principal a cluster operation: on older brokers the idempotent producer needs IdempotentWrite on the cluster (newer ones ask only for Write on the topics)",
        Some(C::TopicAuthorizationFailed) => "an ACL refuses sluice's principal a topic: it needs Describe and Read on the input topics and Describe and Write on the output topics (and, with exactly_once, Read, Write and Create on the progress and changelog topics)",
        Some(code) => fenced_advice(code).unwrap_or(ClientErrorKind::of(error).advice()),
        None => ClientErrorKind::of(error).advice(),
    }
}

static COUNTS: [AtomicU64; ClientErrorKind::ALL.len()] =
    [const { AtomicU64::new(0) }; ClientErrorKind::ALL.len()];

/// Per kind (`ClientErrorKind::index`), the newest error's words and when it came.
static NEWEST: Mutex<[Option<(String, Instant)>; ClientErrorKind::ALL.len()]> =
    Mutex::new([const { None }; ClientErrorKind::ALL.len()]);

/// The context of a client whose errors need nothing but counting and logging (the readers
/// of a topic to its end, the standby tail, the admin client, the output topics' look-up at
/// start): `record`ed as `self.0`.
pub struct Counted(pub &'static str);

impl rdkafka::ClientContext for Counted {
    fn error(&self, error: RdError, reason: &str) {
        record(self.0, &error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for Counted {}

/// For a producer that only asks for metadata (it sends no record).
impl rdkafka::producer::ProducerContext for Counted {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// Count a client-level error from librdkafka (a context's `error` callback) and log it:
/// the 1st, 2nd, 4th, ... of each kind, so an outage or a wrong password is visible at once
/// but not a log storm while librdkafka retries. `client` names who heard it.
pub fn record(client: &str, error: &RdError, reason: &str) {
    // A reader with `enable.partition.eof` hears each partition's end as a global error: a
    // notice, not broker trouble (logged at ERROR it was a line per partition at every start).
    if matches!(
        error,
        RdError::PartitionEOF(_) | RdError::Global(C::PartitionEOF)
    ) {
        tracing::debug!("Kafka {client}: {error}: {reason}");
        return;
    }
    let (kind, n) = note(error, reason);
    if n.is_power_of_two() {
        let kind_label = kind.label();
        // ERROR, as librdkafka's own default (a fatal error of the transactional producer
        // is an `Other`).
        match kind {
            ClientErrorKind::Other => {
                tracing::error!(
                    count = n,
                    kind = kind_label,
                    "Kafka {client}: {error}: {reason}"
                )
            }
            _ => tracing::error!(
                count = n,
                kind = kind_label,
                "Kafka {client}: {} (librdkafka: {reason})",
                advice_for(error)
            ),
        }
    }
}

/// `record` without the log (for a caller that reports the error itself): the error's kind
/// and how many of that kind there have been.
pub fn note(error: &RdError, reason: &str) -> (ClientErrorKind, u64) {
    let kind = ClientErrorKind::of(error);
    let n = COUNTS
        .get(kind.index())
        .map_or(1, |c| c.fetch_add(1, Ordering::Relaxed) + 1);
    // A lock and a copy per error event (broker trouble, a few a second at most while
    // librdkafka retries), never per record.
    if let Ok(mut newest) = NEWEST.lock() {
        if let Some(slot) = newest.get_mut(kind.index()) {
            *slot = Some((reason.to_owned(), Instant::now()));
        }
    }
    (kind, n)
}

/// Errors of `kind` counted since the process started.
pub fn count(kind: ClientErrorKind) -> u64 {
    COUNTS
        .get(kind.index())
        .map_or(0, |c| c.load(Ordering::Relaxed))
}

/// How far back the status line and `cluster status` look for broker trouble: librdkafka's
/// reconnects back off to 10 s, so a shorter window would blink.
pub const TROUBLE_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

/// The cause among the errors that came within `within` of now, with librdkafka's words:
/// an authentication, TLS or authorization error before a transport one, since a refused
/// connection is also reported as "all brokers are down". `Other` errors are not a cause.
pub fn newest(within: std::time::Duration) -> Option<(ClientErrorKind, String)> {
    use ClientErrorKind as K;
    let newest = NEWEST.lock().ok()?;
    [K::Authentication, K::Tls, K::Authorization, K::Transport]
        .into_iter()
        .find_map(|kind| match newest.get(kind.index())? {
            Some((said, at)) if at.elapsed() <= within => Some((kind, said.clone())),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_librdkafkas_codes() {
        for (code, kind) in [
            (C::Authentication, ClientErrorKind::Authentication),
            (C::SaslAuthenticationFailed, ClientErrorKind::Authentication),
            (C::TopicAuthorizationFailed, ClientErrorKind::Authorization),
            (
                C::TransactionalIdAuthorizationFailed,
                ClientErrorKind::Authorization,
            ),
            (C::SSL, ClientErrorKind::Tls),
            (C::AllBrokersDown, ClientErrorKind::Transport),
            (C::BrokerTransportFailure, ClientErrorKind::Transport),
            (C::Resolve, ClientErrorKind::Transport),
            (C::Fenced, ClientErrorKind::Fenced),
            (C::ProducerFenced, ClientErrorKind::Fenced),
            (C::FencedInstanceId, ClientErrorKind::Fenced),
            (C::MessageSizeTooLarge, ClientErrorKind::Other),
        ] {
            assert_eq!(ClientErrorKind::of_code(code), kind, "{code:?}");
            assert_eq!(
                ClientErrorKind::of(&RdError::Global(code)),
                kind,
                "{code:?} as a global error"
            );
        }
        // A consumer's poll hands the same event back as a consumption error.
        assert_eq!(
            ClientErrorKind::of(&RdError::MessageConsumption(C::Authentication)),
            ClientErrorKind::Authentication
        );
    }

    #[test]
    fn a_fencing_names_the_identity_its_client_lost() {
        let member = fatal_error_text("consumer", C::FencedInstanceId, "fenced");
        assert!(member.contains("group.instance.id"), "{member}");
        assert!(!member.contains("transactional.id"), "{member}");
        for code in [C::Fenced, C::ProducerFenced] {
            let producer = fatal_error_text("producer", code, "fenced");
            assert!(producer.contains("transactional.id"), "{producer}");
            assert!(!producer.contains("group.instance.id"), "{producer}");
            assert_eq!(advice_for(&RdError::Global(code)), FENCED_PRODUCER);
        }
        let other = fatal_error_text("producer", C::MessageSizeTooLarge, "too big");
        assert_eq!(
            other,
            "Kafka producer: fatal error MessageSizeTooLarge: too big"
        );
        assert_eq!(
            advice_for(&RdError::MessageConsumption(C::FencedInstanceId)),
            FENCED_MEMBER
        );
    }

    #[test]
    fn each_error_is_counted_by_kind_and_the_newest_kept() {
        let before: Vec<u64> = ClientErrorKind::ALL.iter().map(|&k| count(k)).collect();
        record(
            "test",
            &RdError::Global(C::SSL),
            "SSL handshake failed: certificate verify failed",
        );
        record("test", &RdError::Global(C::MessageSizeTooLarge), "too big");
        record(
            "test",
            &RdError::Global(C::AllBrokersDown),
            "1/1 brokers are down",
        );
        let after: Vec<u64> = ClientErrorKind::ALL.iter().map(|&k| count(k)).collect();
        // Other tests of this process may count too: at least these.
        assert!(after[ClientErrorKind::Tls.index()] > before[ClientErrorKind::Tls.index()]);
        assert!(after[ClientErrorKind::Other.index()] > before[ClientErrorKind::Other.index()]);
        // The handshake is the cause, not the brokers being down that followed it. (Another
        // test may have recorded an authentication error, which ranks first.)
        let (kind, said) = newest(std::time::Duration::from_secs(3600)).unwrap();
        assert!(
            matches!(kind, ClientErrorKind::Tls | ClientErrorKind::Authentication),
            "{kind:?}: {said}"
        );
    }
}
