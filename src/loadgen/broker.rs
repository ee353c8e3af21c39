//! A local Kafka-compatible broker for the demo, the Kafka benchmark and the tests: the
//! noida-db binary that scripts/install-deps installs, started on a free loopback port with a
//! data dir of its own and stopped by PID (kill -9 leaves its data for a restart).

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

/// The broker binary scripts/install-deps installs (`$SLUICE_BROKER_BIN` overrides).
pub const BROKER_BIN: &str = "noida-db-0.2.3";

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("no local Kafka broker: {BROKER_BIN} is not in /usr/local/lib/sluice or ~/.local/lib/sluice (run scripts/install-deps, or set SLUICE_BROKER_BIN)")]
    NotInstalled,
    #[error("local broker: {0}")]
    Io(#[from] std::io::Error),
    #[error("local broker did not listen on {0} within 20 s")]
    NoListen(String),
    #[error("local broker: {0}")]
    Kafka(String),
}

pub fn find_bin() -> Result<PathBuf, BrokerError> {
    if let Ok(p) = std::env::var("SLUICE_BROKER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = vec![PathBuf::from("/usr/local/lib/sluice").join(BROKER_BIN)];
    if let Ok(home) = std::env::var("HOME") {
        candidates.push(
            PathBuf::from(home)
                .join(".local/lib/sluice")
                .join(BROKER_BIN),
        );
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or(BrokerError::NotInstalled)
}

pub struct LocalBroker {
    child: Option<Child>,
    /// host:port to give clients.
    pub addr: String,
    port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
}

impl LocalBroker {
    /// A broker on a free port with an empty data dir under the temp dir (`name` makes it
    /// unique beside the process id), listening when this returns.
    pub fn start(name: &str) -> Result<Self, BrokerError> {
        let bin = find_bin()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("sluice-broker-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut b = LocalBroker {
            child: None,
            addr: format!("127.0.0.1:{port}"),
            port,
            dir,
            bin,
        };
        b.restart()?;
        Ok(b)
    }

    /// Start (again) on the same port and data dir: topics, offsets and transactions persist.
    pub fn restart(&mut self) -> Result<(), BrokerError> {
        self.stop();
        let child = Command::new(&self.bin)
            .args(["start", "--only", "kafka", "--kafka-port"])
            .arg(self.port.to_string())
            .args(["--host", "127.0.0.1", "--data-dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&self.addr).is_err() {
            if Instant::now() > deadline {
                return Err(BrokerError::NoListen(self.addr.clone()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stop the broker with SIGTERM and wait for it: an outage, its data kept for `restart`.
    /// (noida-db 0.2.3 writes lazily: after a kill -9 right after writes, even topics created
    /// seconds before were gone on restart.)
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_err() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }

    /// Freeze (SIGSTOP) or thaw (SIGCONT) the broker: a broker that hangs with its
    /// connections open, which clients see only through their timeouts.
    pub fn freeze(&self, frozen: bool) {
        if let Some(c) = &self.child {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let sig = if frozen {
                nix::sys::signal::Signal::SIGSTOP
            } else {
                nix::sys::signal::Signal::SIGCONT
            };
            let _ = nix::sys::signal::kill(pid, sig);
        }
    }

    /// The broker's process id while it runs (for its CPU time in /proc).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// kill -9 the broker (what it had not written out yet is lost).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), BrokerError> {
        create_topic_with(&self.addr, topic, partitions, &[])
    }

    /// `create_topic` with topic configs (`max.message.bytes`, ...).
    pub fn create_topic_with(
        &self,
        topic: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> Result<(), BrokerError> {
        create_topic_with(&self.addr, topic, partitions, configs)
    }
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn admin(brokers: &str) -> Result<(AdminClient<DefaultClientContext>, AdminOptions), BrokerError> {
    let admin = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| BrokerError::Kafka(e.to_string()))?;
    Ok((
        admin,
        AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))
}

/// Let records be deleted from compacted `topic` (`cleanup.policy = compact,delete`: Kafka
/// refuses DeleteRecords on a topic that is only compacted).
pub fn allow_deleting_records(brokers: &str, topic: &str) -> Result<(), BrokerError> {
    let (admin, opts) = admin(brokers)?;
    let policy = rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic(topic))
        .set("cleanup.policy", "compact,delete");
    let res = futures_executor::block_on(admin.alter_configs(&[policy], &opts))
        .map_err(|e| BrokerError::Kafka(e.to_string()))?;
    for r in res {
        r.map_err(|(_, code)| BrokerError::Kafka(format!("altering {topic}: {code}")))?;
    }
    Ok(())
}

/// Delete the records before offset `before` from each of `topic`'s first `partitions`
/// partitions (what retention does): its start offset moves to `before`.
pub fn delete_records_before(
    brokers: &str,
    topic: &str,
    partitions: i32,
    before: i64,
) -> Result<(), BrokerError> {
    let (admin, opts) = admin(brokers)?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(before))
            .map_err(|e| BrokerError::Kafka(e.to_string()))?;
    }
    let deleted = futures_executor::block_on(admin.delete_records(&tpl, &opts))
        .map_err(|e| BrokerError::Kafka(e.to_string()))?;
    for e in deleted.elements() {
        e.error()
            .map_err(|e| BrokerError::Kafka(format!("deleting records of {topic}: {e}")))?;
    }
    Ok(())
}

/// Create `topic` with `partitions` on `brokers` (an existing one is fine).
pub fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<(), BrokerError> {
    create_topic_with(brokers, topic, partitions, &[])
}

/// `create_topic` with topic configs.
pub fn create_topic_with(
    brokers: &str,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> Result<(), BrokerError> {
    let (admin, opts) = admin(brokers)?;
    let mut t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let res = futures_executor::block_on(admin.create_topics([&t], &opts))
        .map_err(|e| BrokerError::Kafka(e.to_string()))?;
    for r in res {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(BrokerError::Kafka(format!("creating {t}: {code}"))),
        }
    }
    Ok(())
}
