// The XDP program of `ingest.udp.driver = af_xdp`: UDP to sluice's port goes to the AF_XDP
// socket of the receive queue it arrived on; everything else (ARP, ICMP, other ports, IP
// fragments, frames too short to name a port) goes on to the kernel as if no program were
// there. It only finds the destination port: user space checks lengths and checksums and
// counts what it refuses by reason, so a malformed frame for sluice is seen and counted, not
// lost in the kernel.
//
// Built by scripts/build-xdp (clang -target bpf; the flags that make the object byte-identical
// are there); the object beside this file is committed and loaded by src/ingest/xdp/program.rs.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

// One AF_XDP socket per receive queue (index = queue id). A queue without one: XDP_PASS.
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} sluice_xsks SEC(".maps");

// Set by the loader before the program loads (read-only to the program).
// Destination UDP port, network byte order.
volatile const __u16 sluice_port = 0;
// Which families to take: bit 0 IPv4, bit 1 IPv6.
volatile const __u8 sluice_families = 0;
// Destination address to match, network byte order; all zero = any.
volatile const __u32 sluice_ipv4 = 0;
volatile const __u8 sluice_ipv6[16] = {};

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

static __always_inline int ipv6_wanted(const struct ipv6hdr *ip6)
{
	int any = 1;
#pragma unroll
	for (int i = 0; i < 16; i++) {
		if (sluice_ipv6[i] != 0)
			any = 0;
	}
	if (any)
		return 1;
#pragma unroll
	for (int i = 0; i < 16; i++) {
		if (ip6->daddr.s6_addr[i] != sluice_ipv6[i])
			return 0;
	}
	return 1;
}

SEC("xdp.frags")
int sluice_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	__be16 proto = eth->h_proto;
	void *l3 = eth + 1;
	// Up to two VLAN tags (802.1Q, or 802.1ad outer + 802.1Q inner).
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		struct vlan_hdr *vlan = l3;
		if ((void *)(vlan + 1) > end)
			return XDP_PASS;
		proto = vlan->proto;
		l3 = vlan + 1;
	}
	__be16 *ports;
	if (proto == bpf_htons(ETH_P_IP)) {
		if (!(sluice_families & 1))
			return XDP_PASS;
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > end)
			return XDP_PASS;
		if (ip->protocol != IPPROTO_UDP)
			return XDP_PASS;
		// Fragments: the kernel reassembles them (and sluice's socket receives them).
		if (ip->frag_off & bpf_htons(0x3fff))
			return XDP_PASS;
		if (sluice_ipv4 != 0 && ip->daddr != sluice_ipv4)
			return XDP_PASS;
		__u32 ihl = ip->ihl * 4;
		if (ihl < sizeof(*ip))
			ihl = sizeof(*ip);
		ports = (void *)ip + ihl;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		if (!(sluice_families & 2))
			return XDP_PASS;
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end)
			return XDP_PASS;
		// Extension headers (fragments among them) are left to the kernel.
		if (ip6->nexthdr != IPPROTO_UDP)
			return XDP_PASS;
		if (!ipv6_wanted(ip6))
			return XDP_PASS;
		ports = (void *)(ip6 + 1);
	} else {
		return XDP_PASS;
	}
	// Source and destination port only: a header cut after them still reaches user space,
	// which counts it as truncated.
	if ((void *)(ports + 2) > end)
		return XDP_PASS;
	if (ports[1] != sluice_port)
		return XDP_PASS;
	return bpf_redirect_map(&sluice_xsks, ctx->rx_queue_index, XDP_PASS);
}

char _license[] SEC("license") = "Apache-2.0";
