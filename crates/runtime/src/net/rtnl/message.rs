//! The bytes of rtnetlink: requests built attribute by attribute, replies
//! split into messages and attributes, and the family headers
//! (`struct ifinfomsg`, `ifaddrmsg`, `rtmsg`) — the kernel's UAPI layouts,
//! native byte order, 4-byte alignment.

use std::net::{IpAddr, Ipv4Addr};

use nix::errno::Errno;

// libc spells the netlink flags, message types, address families and
// interface flags as `c_int`, while the headers' fields are u16/u8/u32;
// they are narrowed here, in constants, so a value that did not fit would
// stop the build instead of being cut.
const NLM_F_REQUEST: u16 = c_u16(libc::NLM_F_REQUEST);
pub(super) const NLM_F_ACK: u16 = c_u16(libc::NLM_F_ACK);
pub(super) const NLM_F_CREATE: u16 = c_u16(libc::NLM_F_CREATE);
pub(super) const NLM_F_EXCL: u16 = c_u16(libc::NLM_F_EXCL);
pub(super) const NLM_F_REPLACE: u16 = c_u16(libc::NLM_F_REPLACE);
pub(super) const NLM_F_DUMP: u16 = c_u16(libc::NLM_F_DUMP);
pub(super) const NLM_F_DUMP_INTR: u16 = c_u16(libc::NLM_F_DUMP_INTR);
pub(super) const NLMSG_ERROR: u16 = c_u16(libc::NLMSG_ERROR);
pub(super) const NLMSG_DONE: u16 = c_u16(libc::NLMSG_DONE);
const AF_UNSPEC: u8 = c_u8(libc::AF_UNSPEC);
pub(super) const AF_INET: u8 = c_u8(libc::AF_INET);
pub(super) const AF_INET6: u8 = c_u8(libc::AF_INET6);
pub(super) const IFF_UP: u32 = c_u32(libc::IFF_UP);
/// An attribute's type without its flag bits (`NLA_TYPE_MASK` is a
/// negative `c_int` in libc).
const NLA_TYPE_MASK: u16 = !(c_u16(libc::NLA_F_NESTED) | c_u16(libc::NLA_F_NET_BYTEORDER));

/// `VETH_INFO_PEER` of `linux/veth.h` (libc lacks it): the peer's
/// `struct ifinfomsg` and attributes, inside a veth's `IFLA_INFO_DATA`.
pub(super) const VETH_INFO_PEER: u16 = 1;

/// `struct nlmsghdr`: length, type, flags, sequence number, port id.
const NLMSG_HDRLEN: usize = 16;
/// `struct nlattr`: length, type.
const NLA_HDRLEN: usize = 4;
/// `struct ifinfomsg`: family, pad, type, index, flags, change.
const IFINFOMSG_LEN: usize = 16;
/// Where `ifi_index` sits in a `struct ifinfomsg` (family, pad, type).
const IFI_INDEX_AT: usize = 4;

/// The outcome an NLMSG_ERROR (an ACK when 0) or NLMSG_DONE carries: a
/// negative errno in its first 4 bytes.
pub(super) fn status(payload: &[u8]) -> Result<(), Errno> {
    match ne_i32(payload, 0) {
        None | Some(0) => Ok(()),
        Some(e) => Err(Errno::from_raw(e.saturating_abs())),
    }
}

/// A request being built: the netlink header, the family header, then
/// attributes. Lengths that do not fit their field are remembered and
/// refused at [`Request::finish`] (EMSGSIZE) instead of being cut.
pub(super) struct Request {
    buf: Vec<u8>,
    too_long: bool,
}

impl Request {
    /// `NLM_F_REQUEST` is added to `flags`; the length, sequence number
    /// and port (0: the kernel fills in ours) come at [`Request::finish`].
    pub(super) fn new(kind: u16, flags: u16, header: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&[0; 8]);
        let mut req = Self {
            buf,
            too_long: false,
        };
        req.raw(header);
        req
    }

    /// Bytes as they are (a family header), padded to 4.
    pub(super) fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.pad();
    }

    pub(super) fn attr(&mut self, kind: u16, payload: &[u8]) {
        let at = self.begin(kind);
        self.buf.extend_from_slice(payload);
        self.end(at);
    }

    pub(super) fn attr_u32(&mut self, kind: u16, value: u32) {
        self.attr(kind, &value.to_ne_bytes());
    }

    /// A string attribute, NUL-terminated as the kernel's NLA_STRING
    /// policies accept it.
    pub(super) fn attr_str(&mut self, kind: u16, value: &str) {
        let at = self.begin(kind);
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(0);
        self.end(at);
    }

    /// Opens an attribute whose payload follows (nested attributes);
    /// returns where it starts, for [`Request::end`].
    pub(super) fn begin(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 2]);
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        at
    }

    /// Closes the attribute begun at `at`: its length counts what was
    /// written since (nested attributes with their padding), not its own
    /// trailing padding.
    pub(super) fn end(&mut self, at: usize) {
        let len = self.buf.len() - at;
        match u16::try_from(len) {
            Ok(len) => self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes()),
            Err(_) => self.too_long = true,
        }
        self.pad();
    }

    fn pad(&mut self) {
        self.buf.resize(align(self.buf.len()), 0);
    }

    pub(super) fn finish(mut self, seq: u32) -> Result<Vec<u8>, Errno> {
        let len = u32::try_from(self.buf.len()).map_err(|_| Errno::EMSGSIZE)?;
        if self.too_long {
            return Err(Errno::EMSGSIZE);
        }
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        Ok(self.buf)
    }
}

/// One netlink message of a datagram.
pub(super) struct Reply<'a> {
    pub(super) kind: u16,
    pub(super) flags: u16,
    pub(super) seq: u32,
    pub(super) payload: &'a [u8],
}

/// The messages of a datagram, in order; a message whose length runs past
/// the datagram or below the header ends it with EBADMSG.
pub(super) struct Replies<'a>(pub(super) &'a [u8]);

impl<'a> Iterator for Replies<'a> {
    type Item = Result<Reply<'a>, Errno>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.len() < NLMSG_HDRLEN {
            return None;
        }
        let bytes = self.0;
        let len = ne_u32(bytes, 0).and_then(|l| usize::try_from(l).ok());
        let Some(len) = len.filter(|l| (NLMSG_HDRLEN..=bytes.len()).contains(l)) else {
            self.0 = &[];
            return Some(Err(Errno::EBADMSG));
        };
        self.0 = bytes.get(align(len)..).unwrap_or(&[]);
        Some(Ok(Reply {
            kind: ne_u16(bytes, 4)?,
            flags: ne_u16(bytes, 6)?,
            seq: ne_u32(bytes, 8)?,
            payload: &bytes[NLMSG_HDRLEN..len],
        }))
    }
}

/// The attributes in `bytes` as (type without the NLA_F_* bits, payload);
/// a malformed one ends the walk.
pub(super) fn attrs(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(ne_u16(bytes, 0)?);
        let kind = ne_u16(bytes, 2)? & NLA_TYPE_MASK;
        let payload = bytes.get(NLA_HDRLEN..len)?;
        bytes = bytes.get(align(len)..).unwrap_or(&[]);
        Some((kind, payload))
    })
}

/// (index, name) of an RTM_NEWLINK payload: `struct ifinfomsg`, then
/// attributes.
pub(super) fn link_of(payload: &[u8]) -> Option<(u32, String)> {
    let index = u32::try_from(ne_i32(payload, IFI_INDEX_AT)?).ok()?;
    let (_, name) = attrs(payload.get(IFINFOMSG_LEN..)?).find(|(k, _)| *k == libc::IFLA_IFNAME)?;
    let name = name.split(|b| *b == 0).next().unwrap_or_default();
    Some((index, String::from_utf8(name.to_vec()).ok()?))
}

/// `struct ifinfomsg` (family unspecified, type 0): which link, and
/// which of its flags (`change`) to set to `flags`.
pub(super) fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; IFINFOMSG_LEN] {
    let mut m = [0; IFINFOMSG_LEN];
    m[0] = AF_UNSPEC;
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

/// `struct ndmsg` of a permanent neighbour entry on link `index`.
pub(super) fn ndmsg(family: u8, index: u32) -> [u8; 12] {
    let mut m = [0; 12];
    m[0] = family;
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..10].copy_from_slice(&c_u16(libc::NUD_PERMANENT.into()).to_ne_bytes());
    m
}

/// `struct ifaddrmsg`: family, prefix length, flags, scope (universe),
/// link.
pub(super) fn ifaddrmsg(family: u8, prefix: u8, index: u32) -> [u8; 8] {
    let mut m = [family, prefix, 0, libc::RT_SCOPE_UNIVERSE, 0, 0, 0, 0];
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m
}

/// `struct rtmsg` of a default route: no destination or source prefix,
/// main table, protocol boot, scope universe, unicast, no flags.
pub(super) fn rtmsg(family: u8) -> [u8; 12] {
    [
        family,
        0,
        0,
        0,
        libc::RT_TABLE_MAIN,
        libc::RTPROT_BOOT,
        libc::RT_SCOPE_UNIVERSE,
        libc::RTN_UNICAST,
        0,
        0,
        0,
        0,
    ]
}

/// An address's family, its bytes in network order, and its bit count.
pub(super) fn ip_parts(addr: IpAddr) -> (u8, Vec<u8>, u8) {
    match addr {
        IpAddr::V4(a) => (AF_INET, a.octets().to_vec(), 32),
        IpAddr::V6(a) => (AF_INET6, a.octets().to_vec(), 128),
    }
}

/// The subnet's broadcast address; none for /31 and /32, which have no
/// room for one (RFC 3021).
pub(super) fn broadcast(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Addr> {
    if prefix >= 31 {
        return None;
    }
    let host = u32::MAX.checked_shr(u32::from(prefix))?;
    Some(Ipv4Addr::from(u32::from(addr) | host))
}

const fn align(len: usize) -> usize {
    (len + 3) & !3
}

fn ne_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn ne_i32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// A non-negative libc constant as u16 (build error if it does not fit).
const fn c_u16(v: libc::c_int) -> u16 {
    assert!(v >= 0 && v <= 0xffff);
    let b = v.to_le_bytes();
    u16::from_le_bytes([b[0], b[1]])
}

/// A non-negative libc constant as u8 (build error if it does not fit).
const fn c_u8(v: libc::c_int) -> u8 {
    assert!(v >= 0 && v <= 0xff);
    v.to_le_bytes()[0]
}

/// A non-negative libc constant as u32 (build error if it is negative).
const fn c_u32(v: libc::c_int) -> u32 {
    assert!(v >= 0);
    u32::from_le_bytes(v.to_le_bytes())
}
