//! From a captured link-layer frame to the UDP datagram in it: Ethernet (with VLAN
//! tags), Linux cooked capture v1 and v2, raw IPv4/IPv6; IP fragments reassembled
//! (etherparse does the parsing and the reassembly), with the reassembly bounded.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use etherparse::defrag::IpDefragPool;
use etherparse::{EtherType, IpNumber, NetSlice, SlicedPacket, TransportSlice, UdpSlice};

/// pcap LINKTYPEs this reads.
pub mod linktype {
    pub const ETHERNET: i32 = 1;
    pub const RAW: i32 = 101;
    pub const LINUX_SLL: i32 = 113;
    pub const IPV4: i32 = 228;
    pub const IPV6: i32 = 229;
    pub const LINUX_SLL2: i32 = 276;
    /// Some systems write DLT_RAW as 12 or 14.
    pub const RAW_ALT: [i32; 2] = [12, 14];
}

/// One UDP datagram found in a frame: its payload borrowed from the frame, or owned
/// when it was reassembled from IP fragments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpDatagram<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Cow<'a, [u8]>,
}

/// Incomplete fragmented packets held at most: beyond it the pool is emptied (a capture
/// of a fragment flood must not exhaust memory).
const MAX_PENDING_FRAGMENTS: usize = 1024;
/// A fragmented packet not complete after this long (capture time) is dropped.
const FRAGMENT_TIMEOUT_NS: u64 = 30_000_000_000;

/// Finds UDP datagrams, holding fragments until their packet is whole.
pub struct UdpExtractor {
    defrag: IpDefragPool<u64, ()>,
    pending: usize,
    /// Frames that are not (or not yet) UDP: other protocols, unknown link types.
    pub skipped: u64,
    /// Frames that failed to parse at the link or IP layer.
    pub malformed: u64,
}

impl Default for UdpExtractor {
    fn default() -> Self {
        UdpExtractor {
            defrag: IpDefragPool::new(),
            pending: 0,
            skipped: 0,
            malformed: 0,
        }
    }
}

impl UdpExtractor {
    /// The UDP datagram in `data` (a frame of `linktype` captured at `ts_ns`), if any.
    pub fn extract<'a>(
        &mut self,
        ts_ns: u64,
        linktype: i32,
        data: &'a [u8],
    ) -> Option<UdpDatagram<'a>> {
        let sliced = match linktype {
            linktype::ETHERNET => SlicedPacket::from_ethernet(data),
            linktype::LINUX_SLL => SlicedPacket::from_linux_sll(data),
            linktype::LINUX_SLL2 => {
                // 20-byte header; the protocol (an EtherType) comes first.
                if data.len() < 20 {
                    self.malformed += 1;
                    return None;
                }
                let proto = u16::from_be_bytes([data[0], data[1]]);
                SlicedPacket::from_ether_type(EtherType(proto), &data[20..])
            }
            linktype::RAW | linktype::IPV4 | linktype::IPV6 => SlicedPacket::from_ip(data),
            other if linktype::RAW_ALT.contains(&other) => SlicedPacket::from_ip(data),
            _ => {
                self.skipped += 1;
                return None;
            }
        };
        let sliced = match sliced {
            Ok(sliced) => sliced,
            Err(_) => {
                self.malformed += 1;
                return None;
            }
        };
        let (src_ip, dst_ip): (IpAddr, IpAddr) = match &sliced.net {
            Some(NetSlice::Ipv4(v4)) => (
                v4.header().source_addr().into(),
                v4.header().destination_addr().into(),
            ),
            Some(NetSlice::Ipv6(v6)) => (
                v6.header().source_addr().into(),
                v6.header().destination_addr().into(),
            ),
            _ => {
                self.skipped += 1;
                return None;
            }
        };
        if let Some(TransportSlice::Udp(udp)) = &sliced.transport {
            return Some(datagram(src_ip, dst_ip, udp));
        }
        // A fragment? The pool returns the whole IP payload once every piece is in.
        let whole = match self.defrag.process_sliced_packet(&sliced, ts_ns, ()) {
            Ok(Some(whole)) => {
                self.pending = self.pending.saturating_sub(1);
                whole
            }
            Ok(None) => {
                if is_fragment(&sliced) {
                    self.pending += 1;
                    self.bound(ts_ns);
                } else {
                    self.skipped += 1;
                }
                return None;
            }
            Err(_) => {
                self.malformed += 1;
                return None;
            }
        };
        let found = if whole.ip_number == IpNumber::UDP {
            UdpSlice::from_slice(&whole.payload)
                .ok()
                .map(|udp| UdpDatagram {
                    src: SocketAddr::new(src_ip, udp.source_port()),
                    dst: SocketAddr::new(dst_ip, udp.destination_port()),
                    payload: Cow::Owned(udp.payload().to_vec()),
                })
        } else {
            self.skipped += 1;
            None
        };
        self.defrag.return_buf(whole);
        found
    }

    fn bound(&mut self, now_ns: u64) {
        if self.pending > MAX_PENDING_FRAGMENTS {
            self.defrag.retain(|_| false);
            self.pending = 0;
        } else {
            self.defrag
                .retain(|started| now_ns.saturating_sub(*started) < FRAGMENT_TIMEOUT_NS);
        }
    }
}

fn is_fragment(sliced: &SlicedPacket<'_>) -> bool {
    match &sliced.net {
        Some(NetSlice::Ipv4(v4)) => v4.payload().fragmented,
        Some(NetSlice::Ipv6(v6)) => v6.payload().fragmented,
        _ => false,
    }
}

fn datagram<'a>(src: IpAddr, dst: IpAddr, udp: &UdpSlice<'a>) -> UdpDatagram<'a> {
    UdpDatagram {
        src: SocketAddr::new(src, udp.source_port()),
        dst: SocketAddr::new(dst, udp.destination_port()),
        payload: Cow::Borrowed(udp.payload()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    const PAYLOAD: &[u8] = b"SM\x01\x04 a sockmsg-looking payload";

    fn ipv4_udp(payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(7402, 7403);
        let mut out = Vec::new();
        builder.write(&mut out, payload).unwrap();
        out
    }

    fn expect(found: Option<UdpDatagram<'_>>, payload: &[u8]) {
        let found = found.expect("a datagram");
        assert_eq!(found.src, "10.0.0.1:7402".parse().unwrap());
        assert_eq!(found.dst, "10.0.0.2:7403".parse().unwrap());
        assert_eq!(&*found.payload, payload);
    }

    #[test]
    fn raw_ip_ethernet_and_linux_cooked_captures() {
        let ip = ipv4_udp(PAYLOAD);
        let mut x = UdpExtractor::default();
        expect(x.extract(0, linktype::RAW, &ip), PAYLOAD);
        expect(x.extract(0, linktype::IPV4, &ip), PAYLOAD);

        let mut ethernet = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        ethernet.extend_from_slice(&ip);
        expect(x.extract(0, linktype::ETHERNET, &ethernet), PAYLOAD);

        // SLL: packet type, ARPHRD, address length, 8 address bytes, protocol.
        let mut sll = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0, 0x08, 0x00];
        sll.extend_from_slice(&ip);
        expect(x.extract(0, linktype::LINUX_SLL, &sll), PAYLOAD);

        // SLL2: protocol first, then 18 more header bytes.
        let mut sll2 = vec![
            0x08, 0x00, 0, 0, 0, 0, 0, 1, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0,
        ];
        sll2.extend_from_slice(&ip);
        expect(x.extract(0, linktype::LINUX_SLL2, &sll2), PAYLOAD);

        let v6 = PacketBuilder::ipv6([1; 16], [2; 16], 64).udp(7402, 7403);
        let mut ip6 = Vec::new();
        v6.write(&mut ip6, PAYLOAD).unwrap();
        let found = x.extract(0, linktype::IPV6, &ip6).expect("IPv6");
        assert_eq!(found.src.port(), 7402);
        assert!(found.src.is_ipv6());

        // Garbage and unknown link types are counted, not fatal.
        assert!(x.extract(0, linktype::ETHERNET, &[1, 2, 3]).is_none());
        assert!(x.extract(0, 9999, &ip).is_none());
        assert_eq!((x.malformed, x.skipped), (1, 1));
    }

    /// An IPv4 header for a fragment of `payload` at `offset` (in bytes, a multiple
    /// of 8), with the more-fragments flag `more`.
    fn fragment(id: u16, offset: usize, more: bool, data: &[u8]) -> Vec<u8> {
        let mut header = etherparse::Ipv4Header::new(
            data.len() as u16,
            64,
            etherparse::IpNumber::UDP,
            [10, 0, 0, 1],
            [10, 0, 0, 2],
        )
        .unwrap();
        header.identification = id;
        header.more_fragments = more;
        header.fragment_offset = etherparse::IpFragOffset::try_new((offset / 8) as u16).unwrap();
        header.header_checksum = header.calc_header_checksum();
        let mut out = Vec::new();
        header.write(&mut out).unwrap();
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn ip_fragments_are_reassembled() {
        let long: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        // The whole UDP datagram (header and payload), cut into IP fragments.
        let whole = ipv4_udp(&long);
        let udp = &whole[20..];
        let mut x = UdpExtractor::default();
        let pieces: Vec<(usize, &[u8])> = udp
            .chunks(1480)
            .enumerate()
            .map(|(i, c)| (i * 1480, c))
            .collect();
        let last = pieces.len() - 1;
        // Out of order: the last piece first.
        let mut found = None;
        for i in (1..=last).rev().chain([0]) {
            let (offset, data) = pieces[i];
            let frame = fragment(77, offset, i != last, data);
            if let Some(datagram) = x.extract(i as u64, linktype::RAW, &frame) {
                found = Some(UdpDatagram {
                    payload: Cow::Owned(datagram.payload.into_owned()),
                    ..datagram
                });
            }
        }
        expect(found, &long);
    }
}
