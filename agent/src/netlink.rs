//! Netlink request/answer exchanges, for every family the agent asks
//! (sock_diag for the sweep and the afxdp server's listeners, rtnetlink
//! for the afxdp next hops).

use anyhow::{bail, Context};
use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_ACK,
    NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_sys::{Socket, SocketAddr};

/// A socket of `protocol`, bound and connected to the kernel.
pub fn open(protocol: isize) -> anyhow::Result<Socket> {
    let mut socket = Socket::new(protocol).context("opening a netlink socket")?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// Sends `request` as a dump on a new socket of `protocol` and calls
/// `each` with every answer until the kernel says done.
pub fn dump<M>(protocol: isize, request: M, each: impl FnMut(M)) -> anyhow::Result<()>
where
    M: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    NetlinkPayload<M>: From<M>,
{
    let socket = open(protocol)?;
    dump_on(&socket, request, &[], &mut vec![0u8; 64 * 1024], each)
}

/// `request` as bytes with `flags`, followed by `attributes` (already
/// encoded, for a request attribute the message type has no field for).
fn encode<M>(request: M, flags: u16, attributes: &[u8], bytes: &mut Vec<u8>)
where
    M: NetlinkSerializable + std::fmt::Debug,
    NetlinkPayload<M>: From<M>,
{
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut packet = NetlinkMessage::new(header, request.into());
    packet.finalize();
    let length = packet.buffer_len();
    bytes.clear();
    bytes.resize(length, 0);
    packet.serialize(&mut bytes[..length]);
    bytes.extend_from_slice(attributes);
    // The message's length covers the attributes (nlmsg_len, the first
    // four bytes, in host order).
    let total = bytes.len() as u32;
    bytes[..4].copy_from_slice(&total.to_ne_bytes());
}

/// A dump on `socket`: `request` and its `attributes`, then `each` with
/// every answer until the kernel says done. `buffer` receives.
pub fn dump_on<M>(
    socket: &Socket,
    request: M,
    attributes: &[u8],
    buffer: &mut [u8],
    mut each: impl FnMut(M),
) -> anyhow::Result<()>
where
    M: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    NetlinkPayload<M>: From<M>,
{
    let mut request_bytes = Vec::new();
    encode(request, NLM_F_REQUEST | NLM_F_DUMP, attributes, &mut request_bytes);
    socket.send(&request_bytes, 0)?;
    loop {
        let size = socket.recv(&mut &mut buffer[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<M>::deserialize(&buffer[offset..size])
                .map_err(|e| anyhow::anyhow!("parsing a netlink answer: {e}"))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(inner) => each(inner),
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(error) => bail!("netlink: {error:?}"),
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

/// What the kernel answered a request for one object.
#[derive(Debug)]
pub enum Answer<M> {
    /// The object.
    Found(M),
    /// No such object (`ENOENT`; `ENODEV` for a link).
    Missing,
}

/// Asks `socket` for one object (a request without `NLM_F_DUMP`).
/// `request_bytes` and `buffer` are the caller's, kept between calls.
/// The kernel answers such a request before `send` returns, so the receive
/// does not wait: an empty socket is an error.
pub fn ask_one<M>(
    socket: &Socket,
    request: M,
    request_bytes: &mut Vec<u8>,
    buffer: &mut [u8],
) -> anyhow::Result<Answer<M>>
where
    M: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    NetlinkPayload<M>: From<M>,
{
    encode(request, NLM_F_REQUEST, &[], request_bytes);
    socket.send(request_bytes, 0)?;
    let size = socket.recv(&mut &mut buffer[..], libc::MSG_DONTWAIT)?;
    let message = NetlinkMessage::<M>::deserialize(&buffer[..size])
        .map_err(|e| anyhow::anyhow!("parsing a netlink answer: {e}"))?;
    match message.payload {
        NetlinkPayload::InnerMessage(inner) => Ok(Answer::Found(inner)),
        NetlinkPayload::Error(error)
            if matches!(error.code.map(|c| -c.get()), Some(libc::ENOENT) | Some(libc::ENODEV)) =>
        {
            Ok(Answer::Missing)
        }
        NetlinkPayload::Error(error) => bail!("netlink: {error:?}"),
        other => bail!("netlink: unexpected answer {other:?}"),
    }
}

/// A change the kernel refused: its errno (`ENOENT`, `EEXIST`...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", std::io::Error::from_raw_os_error(*.0))]
pub struct Refused(pub i32);

/// Sends `request` (a change: a new link, route or rule, a deletion) with
/// `flags` on a new socket of `protocol` and waits for the kernel's
/// acknowledgement; `Err` with [`Refused`] inside when it refuses.
pub fn change<M>(protocol: isize, request: M, flags: u16) -> anyhow::Result<()>
where
    M: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    NetlinkPayload<M>: From<M>,
{
    let socket = open(protocol)?;
    let mut request_bytes = Vec::new();
    encode(request, NLM_F_REQUEST | NLM_F_ACK | flags, &[], &mut request_bytes);
    socket.send(&request_bytes, 0)?;
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let size = socket.recv(&mut &mut buffer[..], 0)?;
        let message = NetlinkMessage::<M>::deserialize(&buffer[..size])
            .map_err(|e| anyhow::anyhow!("parsing a netlink answer: {e}"))?;
        match message.payload {
            NetlinkPayload::Error(error) => {
                return match error.code {
                    None => Ok(()),
                    Some(code) => Err(Refused(-code.get()).into()),
                };
            }
            // An echo or a notification before the acknowledgement.
            _ => continue,
        }
    }
}

/// Whether `error` is the kernel's refusal with `errno`.
pub fn refused_with(error: &anyhow::Error, errno: i32) -> bool {
    error.downcast_ref::<Refused>().is_some_and(|refused| refused.0 == errno)
}

/// Reads and drops whatever `socket` holds, without waiting.
pub fn drain(socket: &Socket, buffer: &mut [u8]) {
    while socket.recv(&mut &mut buffer[..], libc::MSG_DONTWAIT).is_ok() {}
}

#[cfg(test)]
mod tests {
    use netlink_packet_sock_diag::constants::{AF_INET, IPPROTO_TCP};
    use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
    use netlink_packet_sock_diag::SockDiagMessage;

    use super::*;

    fn request() -> SockDiagMessage {
        SockDiagMessage::InetRequest(InetRequest {
            family: AF_INET,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::LISTEN,
            socket_id: SocketId::new_v4(),
        })
    }

    #[test]
    fn attributes_follow_the_request_and_its_length_covers_them() {
        let mut plain = Vec::new();
        encode(request(), NLM_F_REQUEST, &[], &mut plain);
        // nlmsghdr (16) + inet_diag_req_v2 (56).
        assert_eq!(plain.len(), 72);
        assert_eq!(u32::from_ne_bytes(plain[..4].try_into().unwrap()), 72);
        let attribute = [8, 0, 1, 0, 0xaa, 0xbb, 0xcc, 0xdd];
        let mut with = Vec::new();
        encode(request(), NLM_F_REQUEST, &attribute, &mut with);
        assert_eq!(u32::from_ne_bytes(with[..4].try_into().unwrap()), 80);
        assert_eq!(with[4..72], plain[4..72], "the request itself is unchanged");
        assert_eq!(with[72..], attribute);
    }
}
