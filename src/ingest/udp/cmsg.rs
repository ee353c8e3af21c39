//! Socket addresses and control messages as bytes. Both receive paths get raw `sockaddr` and
//! `cmsghdr` bytes from the kernel; parsing them from slices keeps this code free of unsafe.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

const HDR: usize = std::mem::size_of::<libc::cmsghdr>();
const ALIGN: usize = std::mem::size_of::<usize>();

/// What the control messages of one datagram carried.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ControlInfo {
    /// SCM_TIMESTAMPNS as ns since the epoch.
    pub recv_ns: Option<u64>,
    /// SO_RXQ_OVFL: the socket's cumulative drop count.
    pub drops: Option<u32>,
}

fn align(n: usize) -> usize {
    (n + ALIGN - 1) & !(ALIGN - 1)
}

fn read_ne<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at + N)?.try_into().ok()
}

impl ControlInfo {
    pub fn parse(control: &[u8]) -> Self {
        let mut info = ControlInfo::default();
        let mut at = 0;
        while at + HDR <= control.len() {
            let Some(len) = read_ne::<{ ALIGN }>(control, at).map(usize::from_ne_bytes) else {
                break;
            };
            let level = read_ne::<4>(control, at + ALIGN)
                .map(i32::from_ne_bytes)
                .unwrap_or(-1);
            let kind = read_ne::<4>(control, at + ALIGN + 4)
                .map(i32::from_ne_bytes)
                .unwrap_or(-1);
            if len < HDR {
                break;
            }
            let Some(data) = control.get(at + HDR..at + len) else {
                break;
            };
            if level == libc::SOL_SOCKET && kind == libc::SCM_TIMESTAMPNS {
                let sec = read_ne::<8>(data, 0).map(i64::from_ne_bytes);
                let nsec = read_ne::<8>(data, 8).map(i64::from_ne_bytes);
                if let (Some(s), Some(n)) = (sec, nsec) {
                    if s >= 0 && (0..1_000_000_000).contains(&n) {
                        info.recv_ns = Some(s as u64 * 1_000_000_000 + n as u64);
                    }
                }
            } else if level == libc::SOL_SOCKET && kind == libc::SO_RXQ_OVFL {
                info.drops = read_ne::<4>(data, 0).map(u32::from_ne_bytes);
            }
            at += align(len);
        }
        info
    }
}

/// A `sockaddr_in`/`sockaddr_in6` as the kernel wrote it.
pub fn parse_sockaddr(name: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes(read_ne::<2>(name, 0)?));
    let port = u16::from_be_bytes(read_ne::<2>(name, 2)?);
    match family {
        libc::AF_INET => {
            let ip = Ipv4Addr::from(read_ne::<4>(name, 4)?);
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_be_bytes(read_ne::<4>(name, 4)?);
            let ip = Ipv6Addr::from(read_ne::<16>(name, 8)?);
            let scope = u32::from_ne_bytes(read_ne::<4>(name, 24)?);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, port, flow, scope)))
        }
        _ => None,
    }
}

/// Write `addr` as a `sockaddr_in`/`sockaddr_in6` into `out` (>= 28 bytes); returns its length.
pub fn encode_sockaddr(addr: &SocketAddr, out: &mut [u8; 28]) -> u32 {
    *out = [0; 28];
    match addr {
        SocketAddr::V4(a) => {
            out[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            out[2..4].copy_from_slice(&a.port().to_be_bytes());
            out[4..8].copy_from_slice(&a.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>() as u32
        }
        SocketAddr::V6(a) => {
            out[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            out[2..4].copy_from_slice(&a.port().to_be_bytes());
            out[4..8].copy_from_slice(&a.flowinfo().to_be_bytes());
            out[8..24].copy_from_slice(&a.ip().octets());
            out[24..28].copy_from_slice(&a.scope_id().to_ne_bytes());
            std::mem::size_of::<libc::sockaddr_in6>() as u32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trips() {
        for a in ["127.0.0.1:7600", "[::1]:9", "[fe80::1%3]:65535"] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut b = [0u8; 28];
            let n = encode_sockaddr(&addr, &mut b) as usize;
            assert_eq!(parse_sockaddr(&b[..n]), Some(addr));
        }
        assert_eq!(parse_sockaddr(&[0u8; 3]), None);
        assert_eq!(parse_sockaddr(&[0xff; 28]), None);
    }

    fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(HDR + data.len()).to_ne_bytes());
        v.extend_from_slice(&level.to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(data);
        v.resize(align(v.len()), 0);
        v
    }

    #[test]
    fn control_messages_parse_and_garbage_is_ignored() {
        let mut ts = Vec::new();
        ts.extend_from_slice(&5i64.to_ne_bytes());
        ts.extend_from_slice(&7i64.to_ne_bytes());
        let mut c = cmsg(libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS, &ts);
        c.extend(cmsg(
            libc::SOL_SOCKET,
            libc::SO_RXQ_OVFL,
            &9u32.to_ne_bytes(),
        ));
        let info = ControlInfo::parse(&c);
        assert_eq!(info.recv_ns, Some(5_000_000_007));
        assert_eq!(info.drops, Some(9));
        // A length that points past the end stops parsing instead of reading out of bounds.
        let mut bad = c.clone();
        bad[0..8].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert_eq!(ControlInfo::parse(&bad), ControlInfo::default());
        assert_eq!(ControlInfo::parse(&c[..HDR - 1]), ControlInfo::default());
    }
}
