//! One sluice per state directory and per UDP port. A second process on either would not fail
//! by itself: on the same `state.dir` it restores the first one's checkpoint and then both write
//! checkpoints into it (and the Kafka part of both uses the same transactional ids); on the same
//! port SO_REUSEPORT lets it join the first one's socket group, and the kernel splits the
//! datagrams, and so each key's events, between the two. Start refuses both, naming what holds
//! them. (A second `sluice run` started by hand beside the systemd unit is how this happens.)

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

/// The file in `state.dir` whose lock marks it as in use; it holds the holder's pid.
pub const LOCK_FILE: &str = "sluice.lock";

/// `state.dir` held for this process: an exclusive `flock` on its lock file, released when
/// this drops or when the process ends in any way (kill -9 included: the kernel closes the
/// file), so a crash never leaves a stale lock behind.
#[derive(Debug)]
pub struct StateDirLock {
    _lock: Flock<File>,
}

impl StateDirLock {
    /// Take `dir`'s lock (the directory is made if missing); None without `state.dir`.
    pub fn take(dir: &str) -> Result<Option<Self>, String> {
        if dir.is_empty() {
            return Ok(None);
        }
        let path = Path::new(dir).join(LOCK_FILE);
        let problem = |what: &str, e: &dyn std::fmt::Display| {
            format!("state.dir {dir}: {what} {}: {e}", path.display())
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("state.dir {dir}: cannot make it: {e}"))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| problem("opening", &e))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "its pid not yet written".to_owned(),
                    pid => format!("pid {pid}"),
                };
                return Err(format!(
                    "state.dir {dir} is in use by another sluice process ({holder}; it holds \
                     {}): two processes on one state directory would restore the same \
                     checkpoint and then overwrite each other's. Stop that one first (e.g. \
                     systemctl stop sluice), or give this one a state.dir of its own",
                    path.display()
                ));
            }
            Err((_, e)) => return Err(problem("locking", &e)),
        };
        // For the message a second process prints; the lock, not this text, is what excludes.
        let written = lock
            .set_len(0)
            .and_then(|()| writeln!(lock, "{}", std::process::id()));
        written.map_err(|e| problem("writing the pid to", &e))?;
        Ok(Some(Self { _lock: lock }))
    }
}

/// A UDP socket another process (or an earlier sluice still draining) has bound where the
/// kernel would hand it some of `addr`'s datagrams: `addr`'s port, on `addr`'s address or a
/// wildcard (either side). The message names it and, where /proc lets this process see it, its
/// process. None when the port is free or ephemeral (0: the kernel picks a free one).
pub fn udp_port_taken(addr: SocketAddr) -> Option<String> {
    if addr.port() == 0 {
        return None;
    }
    let tables = ["/proc/net/udp", "/proc/net/udp6"];
    let holder = tables
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(UdpEntry::parse)
                .collect::<Vec<_>>()
        })
        .find(|e| e.port == addr.port() && overlaps(e.ip, addr.ip()))?;
    let process = holder_process(holder.inode)
        .map(|(pid, name)| format!("process {pid} ({name}), "))
        .unwrap_or_default();
    Some(format!(
        "ingest.udp.listen {addr}: a UDP socket is already bound to {} ({process}owner uid {}, \
         socket inode {}). sluice binds with SO_REUSEPORT, so the kernel would split the \
         datagrams, and each key's events, between that socket and this sluice. Is another \
         sluice running? Stop it, or give this one another port (127.0.0.1:0 when UDP is \
         not used)",
        SocketAddr::new(holder.ip, holder.port),
        holder.uid,
        holder.inode
    ))
}

/// One line of /proc/net/udp or udp6: `sl local_address rem_address st tx:rx tr:when
/// retrnsmt uid timeout inode ...`, addresses as the kernel's words in hex, host order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UdpEntry {
    ip: IpAddr,
    port: u16,
    uid: u32,
    inode: u64,
}

impl UdpEntry {
    fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (ip, port) = fields.get(1)?.split_once(':')?;
        Some(Self {
            ip: parse_ip(ip)?,
            port: u16::from_str_radix(port, 16).ok()?,
            uid: fields.get(7)?.parse().ok()?,
            inode: fields.get(9)?.parse().ok()?,
        })
    }
}

/// The kernel prints an address as 32-bit words (`%08X` of each in host order): 8 hex digits
/// for IPv4, 32 for IPv6. A v4-mapped IPv6 address is given as the IPv4 one.
fn parse_ip(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| {
        let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(bytes);
            Some(match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            })
        }
        _ => None,
    }
}

/// Whether a socket bound to `theirs` takes datagrams sent to `ours` (same port assumed): the
/// same address, or a wildcard on either side. An IPv6 wildcard is taken to cover IPv4 too
/// (dual-stack, the default; /proc does not say whether it is IPV6_V6ONLY).
fn overlaps(theirs: IpAddr, ours: IpAddr) -> bool {
    theirs == ours
        || theirs.is_unspecified() && (theirs.is_ipv6() || ours.is_ipv4())
        || ours.is_unspecified() && (ours.is_ipv6() || theirs.is_ipv4())
}

/// The process holding socket `inode` open, among those whose fds this process may read; at
/// most `PROCESSES_MAX` processes looked at (only on a refused start, never while serving).
fn holder_process(inode: u64) -> Option<(u32, String)> {
    const PROCESSES_MAX: usize = 100_000;
    let target = format!("socket:[{inode}]");
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .take(PROCESSES_MAX)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .find_map(|pid| {
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
            let holds = fds
                .flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == Path::new(&target)));
            holds.then(|| {
                let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|n| n.trim().to_owned())
                    .unwrap_or_else(|_| "?".to_owned());
                (pid, name)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn proc_net_udp_lines_are_read_as_the_kernel_writes_them() {
        // Lines as a little-endian kernel prints 127.0.0.1:7600, 0.0.0.0:53 and [::1]:7600.
        let v4 = "  12: 0100007F:1DB0 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 4242 2 0000000000000000 0";
        let e = UdpEntry::parse(v4).unwrap();
        assert_eq!(e.ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!((e.port, e.uid, e.inode), (7600, 1000, 4242));
        let any = "  3: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 77 2 0000000000000000 0";
        assert_eq!(
            UdpEntry::parse(any).unwrap().ip,
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        );
        let v6 = "  5: 00000000000000000000000001000000:1DB0 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 99 2 0000000000000000 0";
        assert_eq!(
            UdpEntry::parse(v6).unwrap().ip,
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        );
        assert_eq!(
            UdpEntry::parse("  sl  local_address rem_address   st"),
            None
        );
    }

    #[test]
    fn a_wildcard_on_either_side_overlaps_and_two_addresses_do_not() {
        let lo: IpAddr = Ipv4Addr::LOCALHOST.into();
        let other: IpAddr = Ipv4Addr::new(10, 0, 0, 1).into();
        let any4: IpAddr = Ipv4Addr::UNSPECIFIED.into();
        let any6: IpAddr = Ipv6Addr::UNSPECIFIED.into();
        let lo6: IpAddr = Ipv6Addr::LOCALHOST.into();
        assert!(overlaps(lo, lo));
        assert!(!overlaps(other, lo));
        assert!(overlaps(any4, lo) && overlaps(lo, any4));
        assert!(overlaps(any6, lo) && overlaps(lo, any6));
        assert!(!overlaps(any4, lo6) && !overlaps(lo6, any4));
    }

    #[test]
    fn a_bound_port_is_found_with_its_process_and_a_free_one_is_not() {
        let held = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        // This process holds it, and holder_process skips this process: no process named.
        let why = udp_port_taken(addr).expect("a bound port is taken");
        assert!(why.contains(&format!("bound to {addr}")), "{why}");
        assert!(
            udp_port_taken(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port())).is_some()
        );
        drop(held);
        assert_eq!(udp_port_taken(addr), None, "the port was let go");
        assert_eq!(udp_port_taken("127.0.0.1:0".parse().unwrap()), None);
    }

    #[test]
    fn a_state_dir_is_held_by_one_lock_at_a_time_and_let_go_on_drop() {
        let dir = std::env::temp_dir().join(format!("sluice-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let d = dir.join("state").to_string_lossy().into_owned();
        assert!(StateDirLock::take("").unwrap().is_none());
        let first = StateDirLock::take(&d).unwrap().expect("a lock");
        let pid = std::fs::read_to_string(dir.join("state").join(LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        // flock excludes a second open of the file even in the same process.
        let why = StateDirLock::take(&d).unwrap_err();
        assert!(
            why.contains(&format!("pid {}", std::process::id())),
            "{why}"
        );
        assert!(why.contains("in use by another sluice process"), "{why}");
        drop(first);
        assert!(StateDirLock::take(&d).unwrap().is_some(), "let go on drop");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
