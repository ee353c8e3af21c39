use super::*;

const MACS: ([u8; 6], [u8; 6]) = ([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);

fn v4() -> (SocketAddr, SocketAddr) {
    (
        "169.254.7.2:40000".parse().unwrap(),
        "169.254.7.1:7600".parse().unwrap(),
    )
}

fn v6() -> (SocketAddr, SocketAddr) {
    (
        "[fe80::2]:40000".parse().unwrap(),
        "[fe80::1]:7600".parse().unwrap(),
    )
}

#[test]
fn a_well_formed_frame_gives_its_source_and_payload() {
    for (src, dst) in [v4(), v6()] {
        for vlan in [&[][..], &[7], &[1, 2]] {
            for len in [0usize, 1, 7, 64, 1400] {
                let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let mut f = encode(MACS, vlan, src, dst, &payload);
                // Ethernet padding after the IP packet must not count as payload.
                f.extend_from_slice(&[0xee; 6]);
                let got = parse(&f, true).unwrap_or_else(|e| panic!("{src} {vlan:?} {len}: {e:?}"));
                assert_eq!(got.src, src);
                assert_eq!(&f[got.payload.clone()], &payload[..]);
            }
        }
    }
}

/// Offsets into a frame built by `encode` with no VLAN tag.
const IP: usize = 14;

#[test]
fn every_kind_of_bad_frame_is_refused_with_its_reason() {
    let (s4, d4) = v4();
    let (s6, d6) = v6();
    let good4 = encode(MACS, &[], s4, d4, b"hello sluice");
    let good6 = encode(MACS, &[], s6, d6, b"hello sluice");
    let udp4 = IP + 20;
    let udp6 = IP + 40;
    let cases: Vec<(&str, Vec<u8>, FrameError)> = vec![
        (
            "cut in the Ethernet header",
            good4[..10].to_vec(),
            FrameError::Truncated,
        ),
        (
            "cut in the IPv4 header",
            good4[..IP + 12].to_vec(),
            FrameError::Truncated,
        ),
        (
            "cut in the UDP header",
            good4[..udp4 + 4].to_vec(),
            FrameError::Truncated,
        ),
        (
            "cut in the payload",
            good4[..good4.len() - 3].to_vec(),
            FrameError::Truncated,
        ),
        (
            "IPv6 cut in the payload",
            good6[..good6.len() - 1].to_vec(),
            FrameError::Truncated,
        ),
        (
            "IPv4 IHL 4",
            with(&good4, IP, &[0x44]),
            FrameError::BadLength,
        ),
        (
            "IPv4 total under its header",
            with(&good4, IP + 2, &[0, 24]),
            FrameError::BadLength,
        ),
        (
            "UDP length 7",
            with(&good4, udp4 + 4, &[0, 7]),
            FrameError::BadLength,
        ),
        (
            "UDP length beyond the IP payload",
            with(&good4, udp4 + 4, &[0, 40]),
            FrameError::BadLength,
        ),
        (
            "IPv6 payload length 4",
            with(&good6, IP + 4, &[0, 4]),
            FrameError::BadLength,
        ),
        (
            "IPv4 header checksum",
            with(&good4, IP + 8, &[63]),
            FrameError::BadChecksum,
        ),
        (
            "UDP checksum",
            with(&good4, good4.len() - 1, b"X"),
            FrameError::BadChecksum,
        ),
        (
            "IPv6 UDP checksum",
            with(&good6, good6.len() - 1, b"X"),
            FrameError::BadChecksum,
        ),
        (
            "IPv6 UDP checksum zero",
            with(&good6, udp6 + 6, &[0, 0]),
            FrameError::BadChecksum,
        ),
        ("TCP", with_sum(&good4, IP + 9, 6), FrameError::NotUdp),
        (
            "a fragment",
            with_sum(&good4, IP + 6, 0x20),
            FrameError::NotUdp,
        ),
        ("ARP", with(&good4, 12, &[0x08, 0x06]), FrameError::NotUdp),
        (
            "IPv6 extension header",
            with(&good6, IP + 6, &[0]),
            FrameError::NotUdp,
        ),
    ];
    for (what, frame, want) in cases {
        assert_eq!(parse(&frame, true), Err(want), "{what}");
    }
    // A damaged UDP checksum passes when the check is off; the IPv4 header's never does.
    let bad_sum = with(&good4, good4.len() - 1, b"X");
    assert!(parse(&bad_sum, false).is_ok());
    assert_eq!(
        parse(&with(&good4, IP + 8, &[63]), false),
        Err(FrameError::BadChecksum)
    );
    // IPv4 UDP checksum 0 means "none": accepted.
    assert!(parse(&with(&good4, udp4 + 6, &[0, 0]), true).is_ok());
}

#[test]
fn arbitrary_bytes_never_panic() {
    let (s4, d4) = v4();
    let good = encode(MACS, &[3], s4, d4, b"abcdefgh");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut f = good.clone();
        let at = (x as usize) % f.len();
        f[at] = (x >> 32) as u8;
        f.truncate(((x >> 40) as usize) % (good.len() + 1));
        let _ = parse(&f, x & 1 == 0);
    }
}

fn with(frame: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[at..at + bytes.len()].copy_from_slice(bytes);
    f
}

/// Set one IPv4 header byte and fix the header checksum, so only that byte is wrong.
fn with_sum(frame: &[u8], at: usize, v: u8) -> Vec<u8> {
    let mut f = with(frame, at, &[v]);
    f[IP + 10..IP + 12].copy_from_slice(&[0, 0]);
    let sum = !fold(sum16(&f[IP..IP + 20]));
    f[IP + 10..IP + 12].copy_from_slice(&sum.to_be_bytes());
    f
}
