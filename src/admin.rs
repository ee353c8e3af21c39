//! The admin socket: a Unix socket (`admin.socket`) taking one line per connection:
//!   `reload` | `reload PATH` -> `ok VERSION` or `error WHY`
//!   `version`                -> `ok VERSION`
//!   `state KEY`              -> `ok key K (shard S, hot|spilled): observations=...`
//!   `cluster status`         -> `ok {JSON}`: the Kafka partitions this instance owns
//!   `fault hold SHARD` | `fault release SHARD` -> `ok` (only with `admin.faults = true`:
//!   a held shard stops turning its loop, as a stuck one would; for watchdog and fault tests)
//!   `fault checkpoint SHARD` -> `ok` (same switch: the shard's next checkpoint write fails as
//!   on a full disk; for the Kafka exactly_once tests)
//!   `fault panic SHARD` -> `ok` (same switch: the shard's thread panics at its next loop turn,
//!   or where it is held, as on a bug; the service stops, exit status non-zero)
//! `sluice reload` is its client. Control-plane only: never touched per event.
// Reached by the admin socket: no index that could panic (hardening issue; tests may index).
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::control::Request;
use crate::ingest::kafka::status::ClusterInfo;
use crate::shard::Control;

pub fn serve(
    path: &Path,
    requests: mpsc::Sender<Request>,
    control: Arc<Control>,
    faults: bool,
    cluster: Option<ClusterInfo>,
) -> std::io::Result<JoinHandle<()>> {
    refuse_open_directory(path)?;
    // A socket left by a previous run would make bind fail; anything else at the path is kept,
    // and a socket a running process answers on is refused (the start checked it already, with
    // `refuse_if_served`; this is the same check just before the bind).
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        if let Err(why) = refuse_if_served(path) {
            return Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, why));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    // Only the service's user may connect: the socket reloads models and reads state.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    // The path is removed at the end only while it is still this socket (not one bound since by
    // another process, were that ever to happen).
    let bound = std::fs::symlink_metadata(path).map(|m| (m.dev(), m.ino()))?;
    listener.set_nonblocking(true)?;
    let path: PathBuf = path.to_owned();
    std::thread::Builder::new()
        .name("sluice-admin".into())
        .spawn(move || {
            while !control.stop_requested() {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let faults = faults.then_some(control.as_ref());
                        if let Err(e) = handle(stream, &requests, faults, cluster.as_ref()) {
                            tracing::warn!("admin connection: {e}");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => {
                        tracing::error!(
                            "admin socket {}: {e}; admin commands are off",
                            path.display()
                        );
                        break;
                    }
                }
            }
            if std::fs::symlink_metadata(&path).is_ok_and(|m| (m.dev(), m.ino()) == bound) {
                let _ = std::fs::remove_file(&path);
            }
        })
}

/// How long a process on the admin socket has to answer `version` before it is taken as alive
/// anyway (it accepted the connection: something holds the socket).
const LIVE_ANSWER_WAIT: Duration = Duration::from_secs(2);

/// Refuses an admin socket a running process is serving: binding over it would take it from
/// that process (and remove it from under it at the end). A socket nothing listens on (left by
/// a run that ended without removing it, kill -9 say) is fine: `serve` replaces it.
pub fn refuse_if_served(path: &Path) -> Result<(), String> {
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        return Ok(());
    }
    let Ok(mut stream) = UnixStream::connect(path) else {
        return Ok(());
    };
    // Asked as `sluice reload` asks, so the running one logs nothing for it.
    let answer = stream
        .set_read_timeout(Some(LIVE_ANSWER_WAIT))
        .and_then(|()| stream.write_all(b"version\n"))
        .and_then(|()| read_request(&stream));
    let who = match answer {
        Ok(line) if line.starts_with("ok ") => format!(
            "a running sluice answers on it (model version {})",
            line.trim_start_matches("ok ").trim()
        ),
        _ => "a running process accepts connections on it".to_owned(),
    };
    Err(format!(
        "admin.socket {}: {who}. Another sluice is using it: stop that one first, or give \
         this one an admin.socket of its own",
        path.display()
    ))
}

/// A directory anyone can write to would let another user replace the socket between runs:
/// refused (the sticky bit does not help a name that is removed and re-bound at start).
fn refuse_open_directory(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match crate::preflight::access(dir) {
        crate::preflight::Access::Open(why) => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{why}: put admin.socket in a directory only the service can write (e.g. /run/sluice)"),
        )),
        _ => Ok(()),
    }
}

/// The longest request line read (a longer one is cut there and refused as unknown).
pub const REQUEST_BYTES_MAX: u64 = 4096;

/// One admin request, parsed; nothing done yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Reload(Option<String>),
    Version,
    State(u64),
    ClusterStatus,
    /// `fault hold|release|checkpoint|panic SHARD`, or None when malformed.
    Fault(Option<Fault>),
    /// Why the line is not a request (the answer after `error `).
    Refused(String),
}

/// A fault the admin socket injects (`admin.faults = true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The shard stops turning its loop (true) or goes on (false).
    Hold(bool, usize),
    /// The shard's next checkpoint write fails, as on a full disk.
    FailCheckpoint(usize),
    /// The shard's thread panics at its next loop turn, as on a bug.
    Panic(usize),
}

/// Read one request line from `r`: at most `REQUEST_BYTES_MAX` bytes, UTF-8.
pub fn read_request(r: impl Read) -> std::io::Result<String> {
    let mut line = String::new();
    BufReader::new(r)
        .take(REQUEST_BYTES_MAX)
        .read_line(&mut line)?;
    Ok(line)
}

impl Command {
    pub fn parse(line: &str) -> Self {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("reload"), path, None, None) => Self::Reload(path.map(str::to_owned)),
            (Some("version"), None, ..) => Self::Version,
            (Some("cluster"), Some("status"), None, None) => Self::ClusterStatus,
            (Some("state"), Some(key), None, None) => match key.parse::<u64>() {
                Ok(key) => Self::State(key),
                Err(_) => {
                    Self::Refused(format!("{key:?} is not a key (an unsigned 64-bit integer)"))
                }
            },
            (Some("fault"), verb, shard, None) => {
                Self::Fault(match (verb, shard.and_then(|s| s.parse::<usize>().ok())) {
                    (Some("hold"), Some(s)) => Some(Fault::Hold(true, s)),
                    (Some("release"), Some(s)) => Some(Fault::Hold(false, s)),
                    (Some("checkpoint"), Some(s)) => Some(Fault::FailCheckpoint(s)),
                    (Some("panic"), Some(s)) => Some(Fault::Panic(s)),
                    _ => None,
                })
            }
            _ => Self::Refused(format!(
                "unknown command {:?} (try: reload [PATH], version, state KEY, cluster status)",
                line.trim()
            )),
        }
    }
}

fn handle(
    stream: UnixStream,
    requests: &mpsc::Sender<Request>,
    faults: Option<&Control>,
    cluster: Option<&ClusterInfo>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let line = read_request(&stream)?;
    let answer = match Command::parse(&line) {
        Command::Fault(what) => fault(faults, what),
        Command::Refused(why) => format!("error {why}"),
        Command::ClusterStatus => match cluster {
            None => "error Kafka is off (ingest.kafka.brokers is empty)".to_owned(),
            Some(c) => serde_json::to_string(&c.status())
                .map_or_else(|e| format!("error {e}"), |json| format!("ok {json}")),
        },
        Command::Reload(path) => {
            let (tx, rx) = mpsc::channel();
            let _ = requests.send(Request::Reload { path, reply: tx });
            answer(&rx, Duration::from_secs(120))
        }
        Command::State(key) => {
            let (tx, rx) = mpsc::channel();
            let _ = requests.send(Request::StateGet { key, reply: tx });
            answer(&rx, Duration::from_secs(10))
        }
        Command::Version => {
            let (tx, rx) = mpsc::channel();
            let _ = requests.send(Request::Version { reply: tx });
            rx.recv_timeout(Duration::from_secs(5))
                .map_or_else(|_| "error no answer".to_owned(), |v| format!("ok {v}"))
        }
    };
    (&stream).write_all(format!("{answer}\n").as_bytes())
}

/// The control thread's answer as the reply line: `ok ...` or `error WHY`.
fn answer<T: std::fmt::Display>(
    rx: &mpsc::Receiver<Result<T, String>>,
    timeout: Duration,
) -> String {
    match rx.recv_timeout(timeout) {
        Ok(Ok(v)) => format!("ok {v}"),
        Ok(Err(why)) => format!("error {why}"),
        Err(_) => "error the control thread did not answer".to_owned(),
    }
}

/// `fault hold|release SHARD`: answered once the shard has stopped (hold) or been let go.
/// `fault checkpoint SHARD`, `fault panic SHARD`: answered once the switch is set.
fn fault(control: Option<&Control>, what: Option<Fault>) -> String {
    let Some(control) = control else {
        return "error fault commands are off (admin.faults = false)".to_owned();
    };
    let Some(what) = what else {
        return "error usage: fault hold|release|checkpoint|panic SHARD".to_owned();
    };
    let (hold, shard) = match what {
        Fault::Hold(hold, shard) => (hold, shard),
        Fault::Panic(shard) => {
            return if control.set_panic(shard) {
                tracing::warn!(
                    shard,
                    "fault injected: the shard panics (admin fault panic)"
                );
                "ok".to_owned()
            } else {
                format!("error no shard {shard}")
            };
        }
        Fault::FailCheckpoint(shard) => {
            return if control.fail_next_checkpoint(shard) {
                tracing::warn!(
                    shard,
                    "fault injected: the next checkpoint write fails (admin fault checkpoint)"
                );
                "ok".to_owned()
            } else {
                format!("error shard {shard} has no checkpoints (no such shard, or no state.dir)")
            };
        }
    };
    if !control.set_hold(shard, hold) {
        return format!("error no shard {shard}");
    }
    if hold {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !control.is_holding(shard) {
            if std::time::Instant::now() > deadline {
                return format!("error shard {shard} did not stop within 10 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        tracing::warn!(shard, "fault injected: shard held (admin fault hold)");
    }
    "ok".to_owned()
}

/// Client side: send one command, return the answer line.
pub fn request(path: &Path, command: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(180)))?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    Ok(answer.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_to_commands_and_anything_else_is_refused_with_why() {
        assert_eq!(Command::parse("reload\n"), Command::Reload(None));
        assert_eq!(
            Command::parse("reload /m/v2.onnx\n"),
            Command::Reload(Some("/m/v2.onnx".into()))
        );
        assert_eq!(Command::parse("version"), Command::Version);
        assert_eq!(Command::parse("cluster status\n"), Command::ClusterStatus);
        assert!(matches!(
            Command::parse("cluster"),
            Command::Refused(w) if w.contains("cluster status")
        ));
        assert_eq!(Command::parse(" state 42 "), Command::State(42));
        assert_eq!(
            Command::parse("fault hold 1"),
            Command::Fault(Some(Fault::Hold(true, 1)))
        );
        assert_eq!(
            Command::parse("fault release 0"),
            Command::Fault(Some(Fault::Hold(false, 0)))
        );
        assert_eq!(
            Command::parse("fault checkpoint 2"),
            Command::Fault(Some(Fault::FailCheckpoint(2)))
        );
        assert_eq!(
            Command::parse("fault panic 1"),
            Command::Fault(Some(Fault::Panic(1)))
        );
        assert_eq!(Command::parse("fault squeeze 0"), Command::Fault(None));
        assert!(
            matches!(Command::parse("state -1"), Command::Refused(w) if w.contains("not a key"))
        );
        assert!(
            matches!(Command::parse("reload a b"), Command::Refused(w) if w.contains("unknown command"))
        );
        assert!(matches!(Command::parse(""), Command::Refused(_)));
    }

    #[test]
    fn a_request_line_is_cut_at_its_bound_and_must_be_utf8() {
        let long = "x".repeat(10_000);
        assert_eq!(
            read_request(long.as_bytes()).unwrap().len() as u64,
            REQUEST_BYTES_MAX
        );
        assert_eq!(read_request(&b"version\nmore"[..]).unwrap(), "version\n");
        assert!(read_request(&[0xff, 0xfe, b'\n'][..]).is_err());
    }
}
