//! A small blocking rtnetlink (NETLINK_ROUTE) client: the few link, address
//! and route requests a stack network needs, built by hand as bytes.
//!
//! Why by hand: the messages are a fixed header and a handful of
//! attributes, which is less code than a dependency, and it stays free of
//! `unsafe` (nix owns the socket calls). Layouts are the kernel's UAPI
//! (`linux/netlink.h`, `linux/rtnetlink.h`, `linux/if_link.h`,
//! `linux/if_addr.h`): native byte order, attributes aligned to 4 bytes,
//! addresses in network order.
//!
//! Every request carries `NLM_F_ACK` and a fresh sequence number; replies
//! are read until the kernel's ACK or error for that number (a dump: until
//! `NLMSG_DONE`), and anything else on the socket — stale replies of an
//! earlier request, datagrams not from the kernel — is skipped.

use std::io::IoSliceMut;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, recvmsg, send, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};

use super::valid_ifname;
use message::{
    broadcast, ifaddrmsg, ifinfomsg, ip_parts, link_of, ndmsg, rtmsg, status, Replies, Request,
    AF_INET6, IFF_UP, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REPLACE, VETH_INFO_PEER,
};

mod message;

#[cfg(test)]
mod tests;

/// The receive buffer. The kernel fills a dump's datagrams up to 32 KiB
/// (less when the reader's buffer is smaller) and one link's reply is a
/// few KiB; a datagram that still does not fit is an error (EMSGSIZE),
/// never read cut short.
/// A link, by index or by name.
#[derive(Debug, Clone, Copy)]
pub enum LinkRef<'a> {
    Index(u32),
    Name(&'a str),
}

/// A sandbox's veth pair, for [`Rtnl::add_veth`].
#[derive(Debug, Clone, Copy)]
pub struct Veth<'a> {
    /// The host end's name, put on `master` (a bridge's index).
    pub host: &'a str,
    pub master: u32,
    /// The peer's name, in the network namespace of process `peer_pid`
    /// (as the kernel sees pids from the asker's PID namespace).
    pub peer: &'a str,
    pub peer_pid: i32,
    pub mtu: Option<u32>,
    pub peer_mac: Option<[u8; 6]>,
}

/// `linux/if_link.h`: per address family settings of a link, IPv6's
/// address generation mode, and its "none" (no link-local address).
const IFLA_AF_SPEC: u16 = 26;
const IFLA_INET6_ADDR_GEN_MODE: u16 = 8;
const IN6_ADDR_GEN_MODE_NONE: u8 = 1;

/// `ifa_flags`: no duplicate address detection (`linux/if_addr.h`).
const IFA_F_NODAD: u8 = 0x02;

const RECV_BUF: usize = 64 * 1024;

/// How often a dump is redone when links changed while it ran
/// (`NLM_F_DUMP_INTR`: the kernel says the listing may be inconsistent).
const DUMP_TRIES: usize = 5;

/// A NETLINK_ROUTE socket of the network namespace it was opened in.
#[derive(Debug)]
pub struct Rtnl {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// A socket in the calling thread's network namespace (a socket stays
    /// in the namespace it was made in, wherever the thread goes later).
    pub fn open() -> Result<Self, Errno> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        // Port 0: the kernel picks a free port id for us.
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        Ok(Self {
            fd,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// The index of the link called `name`, `None` when there is none.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, Errno> {
        check_name(name)?;
        let mut req = Request::new(libc::RTM_GETLINK, NLM_F_ACK, &ifinfomsg(0, 0, 0));
        req.attr_str(libc::IFLA_IFNAME, name);
        let mut index = None;
        let found = self.transact(req, &mut |kind, payload| {
            if kind == libc::RTM_NEWLINK {
                index = link_of(payload).map(|(i, _)| i);
            }
            Ok(())
        });
        match found {
            // The kernel answered without saying which link: not a reply
            // we understand.
            Ok(_) => index.ok_or(Errno::EBADMSG).map(Some),
            Err(Errno::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link whose name starts with `prefix`, as (index, name): how
    /// leftovers of an earlier run are found (an RTM_GETLINK dump).
    pub fn links_with_prefix(&mut self, prefix: &str) -> Result<Vec<(u32, String)>, Errno> {
        for _ in 0..DUMP_TRIES {
            let mut links = Vec::new();
            let req = Request::new(libc::RTM_GETLINK, NLM_F_DUMP, &ifinfomsg(0, 0, 0));
            let interrupted = self.transact(req, &mut |kind, payload| {
                if kind == libc::RTM_NEWLINK {
                    links.extend(link_of(payload).filter(|(_, n)| n.starts_with(prefix)));
                }
                Ok(())
            })?;
            if !interrupted {
                return Ok(links);
            }
        }
        Err(Errno::EAGAIN)
    }

    /// Creates the bridge `name` (down, no addresses); returns its index.
    /// EEXIST when a link of that name exists.
    pub fn create_bridge(&mut self, name: &str, mtu: Option<u32>) -> Result<u32, Errno> {
        check_name(name)?;
        let mut req = Request::new(
            libc::RTM_NEWLINK,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &ifinfomsg(0, 0, 0),
        );
        req.attr_str(libc::IFLA_IFNAME, name);
        if let Some(mtu) = mtu {
            req.attr_u32(libc::IFLA_MTU, mtu);
        }
        let info = req.begin(libc::IFLA_LINKINFO);
        req.attr_str(libc::IFLA_INFO_KIND, "bridge");
        req.end(info);
        self.transact(req, &mut ignore)?;
        self.created(name)
    }

    /// A veth pair: `host` stays here; `peer` is created directly in the
    /// network namespace of process `peer_pid` (IFLA_NET_NS_PID inside
    /// VETH_INFO_PEER), named `peer_name` there, with `peer_mac` when given
    /// (a MAC made from the address keeps neighbours' ARP caches right
    /// across a restart at the same address). Returns the host end's
    /// ifindex. Making the peer in place spares a move (RTM_SETLINK with
    /// a namespace), during which the peer would exist here under a name
    /// that may clash with one of ours.
    pub fn create_veth(
        &mut self,
        host: &str,
        peer_name: &str,
        peer_pid: i32,
        mtu: Option<u32>,
        peer_mac: Option<[u8; 6]>,
    ) -> Result<u32, Errno> {
        let v = Veth {
            host,
            master: 0,
            peer: peer_name,
            peer_pid,
            mtu,
            peer_mac,
        };
        let req = veth_request(&v, None)?;
        self.transact(req, &mut ignore)?;
        self.created(host)
    }

    /// A sandbox's pair ([`Veth`]): made with the host end on its bridge
    /// and the peer straight in the sandbox's namespace (down: it is
    /// brought up from there); then the host end, found by name, gets no
    /// IPv6 link-local address and comes up. Three requests, against
    /// five for `create_veth` (with its index lookup), `set_master` and
    /// `set_up` — each holds the kernel's RTNL lock, which every start on
    /// a network shares.
    ///
    /// A bridge port needs no IPv6 of its own, and one that has it sends
    /// duplicate-address, router and listener messages as it comes up,
    /// which the bridge floods to every port: at 10,000 sandboxes on a
    /// network that flood was most of a start.
    pub fn add_veth(&mut self, v: &Veth<'_>) -> Result<(), Errno> {
        let req = veth_request(v, Some(v.master))?;
        self.transact(req, &mut ignore)?;
        // By name: the kernel applies flags before the address family's
        // settings in one request, so the mode is set first, alone.
        self.no_link_local(LinkRef::Name(v.host))?;
        let mut up = Request::new(libc::RTM_SETLINK, NLM_F_ACK, &ifinfomsg(0, IFF_UP, IFF_UP));
        up.attr_str(libc::IFLA_IFNAME, v.host);
        self.transact(up, &mut ignore).map(drop)
    }

    /// No IPv6 link-local address on a link that is still down (`ip link
    /// set … addrgenmode none`): coming up, it sends no duplicate-address,
    /// router or listener messages. Addresses set on it still work.
    pub fn no_link_local(&mut self, link: LinkRef<'_>) -> Result<(), Errno> {
        let index = match link {
            LinkRef::Index(i) => ifi(i)?,
            LinkRef::Name(_) => 0,
        };
        let mut req = Request::new(libc::RTM_SETLINK, NLM_F_ACK, &ifinfomsg(index, 0, 0));
        if let LinkRef::Name(name) = link {
            check_name(name)?;
            req.attr_str(libc::IFLA_IFNAME, name);
        }
        let spec = req.begin(IFLA_AF_SPEC);
        let inet6 = req.begin(u16::from(AF_INET6));
        req.attr(IFLA_INET6_ADDR_GEN_MODE, &[IN6_ADDR_GEN_MODE_NONE]);
        req.end(inet6);
        req.end(spec);
        match self.transact(req, &mut ignore) {
            // No IPv6 on the link (booted with ipv6.disable=1, or an MTU
            // below IPv6's 1280): nothing to quiet.
            Err(Errno::EAFNOSUPPORT) => Ok(()),
            r => r.map(drop),
        }
    }

    /// A permanent neighbour entry: `addr` is at `mac` on link `index`
    /// (replacing what the link had for it). Permanent entries are not
    /// the garbage collector's and do not count against `gc_thresh3`, so
    /// a gateway with 10,000 neighbours keeps finding each.
    pub fn add_neighbour(&mut self, index: u32, addr: IpAddr, mac: [u8; 6]) -> Result<(), Errno> {
        let (family, bytes, _) = ip_parts(addr);
        let mut req = Request::new(
            libc::RTM_NEWNEIGH,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            &ndmsg(family, index),
        );
        req.attr(libc::NDA_DST, &bytes);
        req.attr(libc::NDA_LLADDR, &mac);
        self.transact(req, &mut ignore).map(drop)
    }

    /// Gives link `index` the hardware address `mac` (a bridge keeps one
    /// set so, instead of taking its lowest port's as ports come and go).
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<(), Errno> {
        let mut req = Request::new(libc::RTM_SETLINK, NLM_F_ACK, &ifinfomsg(ifi(index)?, 0, 0));
        req.attr(libc::IFLA_ADDRESS, &mac);
        self.transact(req, &mut ignore).map(drop)
    }

    /// Enslaves link `index` to `master` (a bridge); master 0 releases it.
    pub fn set_master(&mut self, index: u32, master: u32) -> Result<(), Errno> {
        let mut req = Request::new(libc::RTM_SETLINK, NLM_F_ACK, &ifinfomsg(ifi(index)?, 0, 0));
        req.attr_u32(libc::IFLA_MASTER, master);
        self.transact(req, &mut ignore).map(drop)
    }

    /// Sets link `index` administratively up (IFF_UP, nothing else).
    pub fn set_up(&mut self, index: u32) -> Result<(), Errno> {
        let req = Request::new(
            libc::RTM_SETLINK,
            NLM_F_ACK,
            &ifinfomsg(ifi(index)?, IFF_UP, IFF_UP),
        );
        self.transact(req, &mut ignore).map(drop)
    }

    /// Adds `addr`/`prefix` to link `index` (IFA_LOCAL and IFA_ADDRESS the
    /// same: no point-to-point peer; for IPv4 below /31 the subnet's
    /// broadcast address too, as `ip addr add … brd +` does). EEXIST when
    /// the link has it already, EINVAL for a prefix longer than the
    /// address.
    pub fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), Errno> {
        ifi(index)?; // 0 or past i32::MAX: ENODEV, as for links
        let (family, bytes, bits) = ip_parts(addr);
        if prefix > bits {
            return Err(Errno::EINVAL);
        }
        let mut msg = ifaddrmsg(family, prefix, index);
        if addr.is_ipv6() {
            // No duplicate address detection: our addresses are unique by
            // construction, and DAD would keep one tentative (unusable)
            // for a second after the link comes up.
            msg[2] = IFA_F_NODAD;
        }
        let mut req = Request::new(
            libc::RTM_NEWADDR,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &msg,
        );
        req.attr(libc::IFA_LOCAL, &bytes);
        req.attr(libc::IFA_ADDRESS, &bytes);
        if let IpAddr::V4(v4) = addr {
            if let Some(brd) = broadcast(v4, prefix) {
                req.attr(libc::IFA_BROADCAST, &brd.octets());
            }
        }
        self.transact(req, &mut ignore).map(drop)
    }

    /// Adds the default route via `gateway` to the main table (protocol
    /// boot, scope universe, as `ip route add default via …`); the kernel
    /// finds the link from the gateway's on-link route, so the address
    /// of that subnet must be in place first (ENETUNREACH otherwise).
    /// EEXIST when there is a default route already.
    pub fn add_default_route(&mut self, gateway: IpAddr) -> Result<(), Errno> {
        let (family, bytes, _) = ip_parts(gateway);
        let mut req = Request::new(
            libc::RTM_NEWROUTE,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &rtmsg(family),
        );
        req.attr(libc::RTA_GATEWAY, &bytes);
        self.transact(req, &mut ignore).map(drop)
    }

    /// Deletes link `index` (a veth takes its peer along, wherever it is).
    pub fn delete_link(&mut self, index: u32) -> Result<(), Errno> {
        let req = Request::new(libc::RTM_DELLINK, NLM_F_ACK, &ifinfomsg(ifi(index)?, 0, 0));
        self.transact(req, &mut ignore).map(drop)
    }

    /// The index of a link just created: the kernel's ACK does not carry
    /// it, so it is asked for by name.
    fn created(&mut self, name: &str) -> Result<u32, Errno> {
        self.link_index(name)?.ok_or(Errno::ENODEV)
    }

    /// Sends `req` and hands each reply with its sequence number (type,
    /// payload) to `each`, until the kernel's last word: the ACK or error
    /// of a request, NLMSG_DONE of a dump. Returns whether a dump was
    /// interrupted by a change (NLM_F_DUMP_INTR).
    fn transact(&mut self, req: Request, each: &mut Handler<'_>) -> Result<bool, Errno> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let msg = req.finish(seq)?;
        while let Err(e) = send(self.fd.as_raw_fd(), &msg, MsgFlags::empty()) {
            if e != Errno::EINTR {
                return Err(e);
            }
        }
        let mut interrupted = false;
        loop {
            let len = self.receive()?;
            for reply in Replies(&self.buf[..len]) {
                let reply = reply?;
                if reply.seq != seq {
                    continue;
                }
                interrupted |= reply.flags & NLM_F_DUMP_INTR != 0;
                if reply.kind == NLMSG_ERROR || reply.kind == NLMSG_DONE {
                    return status(reply.payload).map(|()| interrupted);
                }
                each(reply.kind, reply.payload)?;
            }
        }
    }

    /// The next datagram from the kernel into `buf`; returns its length.
    fn receive(&mut self) -> Result<usize, Errno> {
        loop {
            let mut iov = [IoSliceMut::new(&mut self.buf)];
            let got = match recvmsg::<NetlinkAddr>(
                self.fd.as_raw_fd(),
                &mut iov,
                None,
                MsgFlags::empty(),
            ) {
                Err(Errno::EINTR) => continue,
                r => r?,
            };
            if got.flags.contains(MsgFlags::MSG_TRUNC) {
                return Err(Errno::EMSGSIZE);
            }
            // Another process may send to our port; only the kernel's
            // (port 0) datagrams are replies.
            if got.address.map(|a| a.pid()) == Some(0) {
                return Ok(got.bytes);
            }
        }
    }
}

/// What [`Rtnl::transact`] hands each reply to: its type and payload.
type Handler<'h> = dyn FnMut(u16, &[u8]) -> Result<(), Errno> + 'h;

/// A reply handler for requests whose only answer is the ACK.
fn ignore(_kind: u16, _payload: &[u8]) -> Result<(), Errno> {
    Ok(())
}

/// EINVAL for a name the kernel would refuse or rewrite (see
/// [`valid_ifname`]), before anything is sent.
fn check_name(name: &str) -> Result<(), Errno> {
    if valid_ifname(name) {
        Ok(())
    } else {
        Err(Errno::EINVAL)
    }
}

/// An ifindex as `ifi_index` (a C int): 0 and values past `i32::MAX` name
/// no link (ENODEV).
fn ifi(index: u32) -> Result<i32, Errno> {
    i32::try_from(index)
        .ok()
        .filter(|i| *i > 0)
        .ok_or(Errno::ENODEV)
}

/// RTM_NEWLINK of a veth pair: `v.host` here (on `master` when given),
/// `v.peer` made in the namespace of process `v.peer_pid`, both down (the
/// kernel configures the peer before the pair is joined, and a veth
/// without its peer cannot open: ENOTCONN).
fn veth_request(v: &Veth<'_>, master: Option<u32>) -> Result<Request, Errno> {
    check_name(v.host)?;
    check_name(v.peer)?;
    let pid = u32::try_from(v.peer_pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or(Errno::EINVAL)?;
    let mut req = Request::new(
        libc::RTM_NEWLINK,
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        &ifinfomsg(0, 0, 0),
    );
    req.attr_str(libc::IFLA_IFNAME, v.host);
    if let Some(m) = master {
        req.attr_u32(libc::IFLA_MASTER, m);
    }
    if let Some(mtu) = v.mtu {
        req.attr_u32(libc::IFLA_MTU, mtu);
    }
    let info = req.begin(libc::IFLA_LINKINFO);
    req.attr_str(libc::IFLA_INFO_KIND, "veth");
    let data = req.begin(libc::IFLA_INFO_DATA);
    let peer = req.begin(VETH_INFO_PEER);
    req.raw(&ifinfomsg(0, 0, 0));
    req.attr_str(libc::IFLA_IFNAME, v.peer);
    if let Some(mtu) = v.mtu {
        req.attr_u32(libc::IFLA_MTU, mtu);
    }
    if let Some(mac) = v.peer_mac {
        req.attr(libc::IFLA_ADDRESS, &mac);
    }
    req.attr_u32(libc::IFLA_NET_NS_PID, pid);
    req.end(peer);
    req.end(data);
    req.end(info);
    Ok(req)
}
