//! A raw frame from the AF_XDP socket to a datagram: Ethernet (up to two VLAN tags), IPv4 or
//! IPv6, UDP, checked as the kernel's UDP stack would check it before a socket saw it —
//! lengths against the frame, the IPv4 header checksum, the UDP checksum — because with
//! AF_XDP nothing did. What fails is counted by reason (`sluice_xdp_frames_dropped_total`).
//! No I/O: bytes in, a source address and the payload's place in the frame out.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::Range;

/// Why a frame the XDP program handed over is not a datagram for sluice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The frame ends before its headers or before the length its IP or UDP header gives.
    Truncated,
    /// A length field that cannot be right: an IPv4 header under 20 bytes, a total length
    /// under its header, a UDP length under 8 or beyond the IP payload.
    BadLength,
    /// The IPv4 header checksum or the UDP checksum does not add up (or an IPv6 UDP checksum
    /// of zero, which IPv6 forbids).
    BadChecksum,
    /// Not UDP over IPv4/IPv6 without fragments or extension headers (the program passes
    /// those to the kernel, so this means the program and this parser disagree).
    NotUdp,
    /// A multi-buffer frame longer than `wire.datagram_bytes_max` plus its headers, or one
    /// whose pieces did not arrive whole.
    TooLong,
}

impl FrameError {
    pub const ALL: [FrameError; 5] = [
        Self::Truncated,
        Self::BadLength,
        Self::BadChecksum,
        Self::NotUdp,
        Self::TooLong,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::BadLength => "bad_length",
            Self::BadChecksum => "bad_checksum",
            Self::NotUdp => "not_udp",
            Self::TooLong => "too_long",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A datagram found in a frame: who sent it and where its payload lies in the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Udp {
    pub src: SocketAddr,
    pub payload: Range<usize>,
}

const ETH_HEADER: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_UDP: u8 = 17;
const UDP_HEADER: usize = 8;

fn be16(f: &[u8], at: usize) -> Result<u16, FrameError> {
    match f.get(at..at + 2) {
        Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
        _ => Err(FrameError::Truncated),
    }
}

fn byte(f: &[u8], at: usize) -> Result<u8, FrameError> {
    f.get(at).copied().ok_or(FrameError::Truncated)
}

fn array<const N: usize>(f: &[u8], at: usize) -> Result<[u8; N], FrameError> {
    f.get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or(FrameError::Truncated)
}

/// One's-complement sum of `bytes` as big-endian 16-bit words (an odd last byte padded with
/// zero), not yet folded.
fn sum16(bytes: &[u8]) -> u64 {
    let mut sum = 0u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        // Four 16-bit words at a time: the 64-bit accumulator cannot overflow for any
        // frame this parser sees (< 2^16 bytes).
        let v = u64::from_be_bytes(w.try_into().unwrap_or([0; 8]));
        sum += (v >> 48) + ((v >> 32) & 0xffff) + ((v >> 16) & 0xffff) + (v & 0xffff);
    }
    let mut rest = words.remainder().chunks_exact(2);
    for w in &mut rest {
        sum += u64::from(u16::from_be_bytes(w.try_into().unwrap_or([0; 2])));
    }
    if let [last] = rest.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Parse and check `frame` as UDP to sluice; `check_udp_sum` off skips the UDP checksum (for
/// links that hand frames over with the checksum left to offload, see the config's note).
pub fn parse(frame: &[u8], check_udp_sum: bool) -> Result<Udp, FrameError> {
    let mut proto = be16(frame, 12)?;
    let mut l3 = ETH_HEADER;
    for _ in 0..2 {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        proto = be16(frame, l3 + 2)?;
        l3 += 4;
    }
    match proto {
        ETH_P_IP => ipv4(frame, l3, check_udp_sum),
        ETH_P_IPV6 => ipv6(frame, l3, check_udp_sum),
        _ => Err(FrameError::NotUdp),
    }
}

fn ipv4(frame: &[u8], l3: usize, check_udp_sum: bool) -> Result<Udp, FrameError> {
    let vihl = byte(frame, l3)?;
    if vihl >> 4 != 4 {
        return Err(FrameError::NotUdp);
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < 20 {
        return Err(FrameError::BadLength);
    }
    let header = frame.get(l3..l3 + ihl).ok_or(FrameError::Truncated)?;
    let total = usize::from(be16(frame, l3 + 2)?);
    if total < ihl + UDP_HEADER {
        return Err(FrameError::BadLength);
    }
    if frame.len() < l3 + total {
        return Err(FrameError::Truncated);
    }
    if be16(frame, l3 + 6)? & 0x3fff != 0 || byte(frame, l3 + 9)? != IPPROTO_UDP {
        return Err(FrameError::NotUdp);
    }
    if fold(sum16(header)) != 0xffff {
        return Err(FrameError::BadChecksum);
    }
    let src: [u8; 4] = array(frame, l3 + 12)?;
    let dst: [u8; 4] = array(frame, l3 + 16)?;
    let udp = l3 + ihl;
    let (sport, payload) = udp_payload(frame, udp, l3 + total)?;
    // IPv4: a zero checksum means the sender computed none.
    if check_udp_sum && be16(frame, udp + 6)? != 0 {
        udp_sum_ok(frame, &src, &dst, udp..payload.end)?;
    }
    Ok(Udp {
        src: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(src), sport)),
        payload,
    })
}

fn ipv6(frame: &[u8], l3: usize, check_udp_sum: bool) -> Result<Udp, FrameError> {
    if byte(frame, l3)? >> 4 != 6 {
        return Err(FrameError::NotUdp);
    }
    let plen = usize::from(be16(frame, l3 + 4)?);
    if byte(frame, l3 + 6)? != IPPROTO_UDP {
        return Err(FrameError::NotUdp);
    }
    let src: [u8; 16] = array(frame, l3 + 8)?;
    let dst: [u8; 16] = array(frame, l3 + 24)?;
    let udp = l3 + 40;
    if plen < UDP_HEADER {
        return Err(FrameError::BadLength);
    }
    if frame.len() < udp + plen {
        return Err(FrameError::Truncated);
    }
    let (sport, payload) = udp_payload(frame, udp, udp + plen)?;
    if check_udp_sum {
        // IPv6 forbids a zero (absent) UDP checksum.
        if be16(frame, udp + 6)? == 0 {
            return Err(FrameError::BadChecksum);
        }
        udp_sum_ok(frame, &src, &dst, udp..payload.end)?;
    }
    Ok(Udp {
        src: SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(src), sport, 0, 0)),
        payload,
    })
}

/// The sum of the UDP pseudo-header: addresses, protocol, UDP length.
fn pseudo_sum(src: &[u8], dst: &[u8], udp_len: usize) -> u64 {
    sum16(src) + sum16(dst) + u64::from(IPPROTO_UDP) + udp_len as u64
}

/// The UDP segment `seg` (header and payload) adds up with its pseudo-header.
fn udp_sum_ok(frame: &[u8], src: &[u8], dst: &[u8], seg: Range<usize>) -> Result<(), FrameError> {
    let len = seg.len();
    let bytes = frame.get(seg).ok_or(FrameError::Truncated)?;
    if fold(pseudo_sum(src, dst, len) + sum16(bytes)) != 0xffff {
        return Err(FrameError::BadChecksum);
    }
    Ok(())
}

/// The UDP header at `udp` inside an IP packet ending at `ip_end`: source port and payload.
fn udp_payload(frame: &[u8], udp: usize, ip_end: usize) -> Result<(u16, Range<usize>), FrameError> {
    let sport = be16(frame, udp)?;
    let len = usize::from(be16(frame, udp + 4)?);
    if len < UDP_HEADER || udp + len > ip_end {
        return Err(FrameError::BadLength);
    }
    Ok((sport, udp + UDP_HEADER..udp + len))
}

/// Build an Ethernet frame carrying `payload` from `src` to `dst` (same family) with correct
/// lengths and checksums, and `vlan` tags: what a sender's NIC would put on the wire. For tests
/// and the benchmark's raw sender; a caller breaks fields afterwards to make bad frames.
pub fn encode(
    macs: ([u8; 6], [u8; 6]),
    vlan: &[u16],
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HEADER + 8 + 48 + payload.len());
    f.extend_from_slice(&macs.1);
    f.extend_from_slice(&macs.0);
    for tci in vlan {
        f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    let udp_len = (UDP_HEADER + payload.len()) as u16;
    let mut udp = Vec::with_capacity(usize::from(udp_len));
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let pseudo = |s: &[u8], d: &[u8]| pseudo_sum(s, d, usize::from(udp_len)) + sum16(&udp);
    match (src.ip(), dst.ip()) {
        (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
            f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&udp_len.to_be_bytes());
            f.extend_from_slice(&[IPPROTO_UDP, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
            let sum = !fold(pseudo(&s.octets(), &d.octets()));
            udp.splice(6..8, (if sum == 0 { 0xffff } else { sum }).to_be_bytes());
        }
        (s, d) => {
            let to4 = |a: std::net::IpAddr| match a {
                std::net::IpAddr::V4(a) => a.octets(),
                std::net::IpAddr::V6(_) => [0; 4],
            };
            let (s, d) = (to4(s), to4(d));
            f.extend_from_slice(&ETH_P_IP.to_be_bytes());
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&(20 + udp_len).to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0x40, 0, 64, IPPROTO_UDP, 0, 0]);
            ip.extend_from_slice(&s);
            ip.extend_from_slice(&d);
            let hsum = !fold(sum16(&ip));
            ip.splice(10..12, hsum.to_be_bytes());
            f.extend_from_slice(&ip);
            let sum = !fold(pseudo(&s, &d));
            udp.splice(6..8, (if sum == 0 { 0xffff } else { sum }).to_be_bytes());
        }
    }
    f.extend_from_slice(&udp);
    f
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
