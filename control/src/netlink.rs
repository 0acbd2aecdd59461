//! One netlink request/dump exchange, for every family the agent asks
//! (sock_diag for the sweep, rtnetlink for the afxdp next hops).

use anyhow::{bail, Context};
use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_sys::{Socket, SocketAddr};

/// Sends `request` as a dump on a new socket of `protocol` and calls
/// `each` with every answer until the kernel says done.
pub fn dump<M>(protocol: isize, request: M, mut each: impl FnMut(M)) -> anyhow::Result<()>
where
    M: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    NetlinkPayload<M>: From<M>,
{
    let mut socket = Socket::new(protocol).context("opening a netlink socket")?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(header, request.into());
    packet.finalize();
    let mut request_bytes = vec![0; packet.buffer_len()];
    packet.serialize(&mut request_bytes);
    socket.send(&request_bytes, 0)?;
    let mut buffer = vec![0u8; 64 * 1024];
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
