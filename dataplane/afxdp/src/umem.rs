//! A worker's UMEM: the memory its sockets share, split into fixed-size
//! chunks, and the record of who owns each chunk.
//!
//! A chunk is always in exactly one place: free (in the worker's free
//! list), with the kernel (on a fill or transmit ring, or on the wire of an
//! in-memory device), or held by the worker (received, being translated).
//! The record is what makes handing out `&mut [u8]` for a batch of held
//! frames sound, and what stops a misbehaving ring from making the worker
//! free or send one chunk twice.

use std::sync::atomic::{AtomicU32, Ordering};

use xdpilone::xdp::XdpDesc;

use crate::sys::Area;
use crate::Error;

/// Chunk size: one page, the UMEM's aligned mode; a standard frame fits
/// with the kernel's 256 bytes of headroom.
pub const FRAME_SIZE: u32 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Free,
    Kernel,
    Worker,
}

/// A frame the worker holds: received and not yet sent or freed. Not
/// `Clone`, and made only by [`Region`] for a chunk its record moves to
/// the worker: there is at most one per chunk, and its bytes lie inside
/// that chunk. That is what makes [`Region::frames_mut`] sound.
#[derive(Debug, PartialEq, Eq)]
pub struct Held {
    region: u32,
    /// The chunk, kept apart from the frame's offset in it: a frame moved
    /// to its chunk's very end must not name the next chunk.
    chunk: u32,
    offset: u32,
    len: u32,
}

impl Held {
    /// Where the frame starts in the UMEM.
    #[inline]
    fn addr(&self) -> u64 {
        u64::from(self.chunk) * u64::from(FRAME_SIZE) + u64::from(self.offset)
    }

    /// The descriptor that hands this frame to the kernel: put it on a
    /// transmit ring, then give the frame to [`Region::send`] if the ring
    /// took it or to [`Region::release`] if not.
    #[inline]
    pub fn descriptor(&self) -> XdpDesc {
        XdpDesc { addr: self.addr(), len: self.len, options: 0 }
    }

    /// The frame's length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True for an empty frame.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops the first `start` bytes (after IPIP decapsulation the frame
    /// starts further in); `start` past the end leaves the frame empty.
    #[inline]
    pub fn advance(&mut self, start: usize) {
        let start = (start as u32).min(self.len);
        self.offset += start;
        self.len -= start;
    }
}

static NEXT_REGION: AtomicU32 = AtomicU32::new(0);

/// What a region has seen go wrong (rings handing back chunks they were
/// not given); kept, not fatal.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RegionErrors {
    /// Descriptors naming a chunk that was not with the kernel, or running
    /// past their chunk.
    pub bad_descriptors: u64,
}

/// A UMEM with its chunk ownership record. Fields drop in order: the
/// kernel's registration before the memory it points into.
#[derive(Debug)]
pub struct Region {
    umem: Option<UmemHandle>,
    area: Area,
    id: u32,
    owners: Vec<Owner>,
    free: Vec<u32>,
    errors: RegionErrors,
    umem_socket_taken: bool,
}

/// xdpilone's `Umem` is not `Debug`.
struct UmemHandle(xdpilone::Umem);

impl std::fmt::Debug for UmemHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Umem")
    }
}

impl Region {
    /// `frames` chunks of [`FRAME_SIZE`] in memory only (no socket): for the
    /// in-memory device.
    pub fn in_memory(frames: u32) -> Result<Region, Error> {
        let len = frames as usize * FRAME_SIZE as usize;
        let area = Area::new(len).map_err(Error::Memory)?;
        Ok(Region {
            umem: None,
            area,
            id: NEXT_REGION.fetch_add(1, Ordering::Relaxed),
            owners: vec![Owner::Free; frames as usize],
            free: (0..frames).rev().collect(),
            errors: RegionErrors::default(),
            umem_socket_taken: false,
        })
    }

    /// `frames` chunks registered with the kernel as a UMEM whose fill and
    /// completion rings hold `ring_size` entries each.
    pub fn registered(frames: u32, ring_size: u32) -> Result<Region, Error> {
        let mut region = Region::in_memory(frames)?;
        let config = xdpilone::UmemConfig {
            fill_size: ring_size,
            complete_size: ring_size,
            frame_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
        };
        let umem = region
            .area
            .register(config)
            .map_err(|e| Error::Socket { what: "registering the UMEM", errno: e.get_raw() })?;
        region.umem = Some(UmemHandle(umem));
        Ok(region)
    }

    /// True the first time only: the first socket of a region is the
    /// UMEM's own descriptor; later ones are sockets of their own bound
    /// with `XDP_SHARED_UMEM`.
    pub(crate) fn take_umem_socket(&mut self) -> bool {
        !std::mem::replace(&mut self.umem_socket_taken, true)
    }

    /// The kernel's UMEM, for making sockets.
    pub(crate) fn umem(&self) -> Option<&xdpilone::Umem> {
        self.umem.as_ref().map(|u| &u.0)
    }

    /// Chunks in the region.
    #[inline]
    pub fn frames(&self) -> u32 {
        self.owners.len() as u32
    }

    /// Chunks free now.
    #[inline]
    pub fn free_frames(&self) -> usize {
        self.free.len()
    }

    /// What went wrong so far.
    pub fn errors(&self) -> RegionErrors {
        self.errors
    }

    /// Takes a free chunk for the kernel (a fill ring, a device); returns
    /// its address.
    #[inline]
    pub fn lend(&mut self) -> Option<u64> {
        let chunk = self.free.pop()?;
        self.owners[chunk as usize] = Owner::Kernel;
        Some(u64::from(chunk) * u64::from(FRAME_SIZE))
    }

    /// A free chunk for the worker to build a frame of `len` bytes in
    /// (its contents are whatever the chunk last held).
    #[inline]
    pub fn take(&mut self, len: usize) -> Option<Held> {
        if len > FRAME_SIZE as usize {
            return None;
        }
        let chunk = self.free.pop()?;
        self.owners[chunk as usize] = Owner::Worker;
        Some(Held { region: self.id, chunk, offset: 0, len: len as u32 })
    }

    /// Puts back a chunk lent to the kernel and not used (a fill ring with
    /// no room).
    #[inline]
    pub fn unlend(&mut self, addr: u64) {
        self.reclaim(addr);
    }

    /// A chunk the kernel is done with (a completion): free again.
    #[inline]
    pub fn reclaim(&mut self, addr: u64) {
        match self.chunk_of(addr) {
            Some(chunk) if self.owners[chunk] == Owner::Kernel => {
                self.owners[chunk] = Owner::Free;
                self.free.push(chunk as u32);
            }
            _ => self.errors.bad_descriptors += 1,
        }
    }

    /// A received descriptor: the worker holds its frame, or `None` (counted)
    /// when the chunk was not with the kernel or the frame runs past it.
    #[inline]
    pub fn receive(&mut self, desc: XdpDesc) -> Option<Held> {
        let Some((chunk, offset)) = self.lent_span(&desc) else {
            self.errors.bad_descriptors += 1;
            return None;
        };
        self.owners[chunk] = Owner::Worker;
        Some(Held { region: self.id, chunk: chunk as u32, offset, len: desc.len })
    }

    /// Hands a held frame to the kernel: its descriptor ([`Held::descriptor`])
    /// is on a transmit ring now. Its chunk comes back through
    /// [`Region::reclaim`]. There is no way back to the worker but the
    /// kernel's: ask the ring for room before giving the frame up.
    #[inline]
    pub fn send(&mut self, held: Held) -> XdpDesc {
        self.give_up(&held, Owner::Kernel);
        held.descriptor()
    }

    /// Frees a held frame (dropped, or no room to send it).
    #[inline]
    pub fn release(&mut self, held: Held) {
        self.give_up(&held, Owner::Free);
        self.free.push(held.chunk);
    }

    /// Moves a held frame's chunk from the worker to `owner`. A frame of
    /// another region would move a chunk someone else may hold here.
    #[inline]
    fn give_up(&mut self, held: &Held, owner: Owner) {
        assert_eq!(held.region, self.id, "a frame of another region");
        let chunk = held.chunk as usize;
        debug_assert_eq!(self.owners[chunk], Owner::Worker);
        self.owners[chunk] = owner;
    }

    /// Writes `bytes` into a chunk lent to the kernel, as a device would:
    /// returns the descriptor of the frame, or `None` if the chunk is not
    /// with the kernel or the bytes do not fit.
    #[inline]
    pub fn write_lent(&mut self, addr: u64, bytes: &[u8]) -> Option<XdpDesc> {
        let chunk = self.chunk_of(addr)?;
        if self.owners[chunk] != Owner::Kernel || bytes.len() > FRAME_SIZE as usize {
            return None;
        }
        let base = chunk * FRAME_SIZE as usize;
        copy_blocks(self.area.bytes_mut(base, bytes.len())?, bytes);
        Some(XdpDesc { addr: base as u64, len: bytes.len() as u32, options: 0 })
    }

    /// The bytes of a frame lent to the kernel (a device reading what it
    /// sends), or `None` if its chunk is not with the kernel.
    #[inline]
    pub fn read_lent(&mut self, desc: &XdpDesc) -> Option<&[u8]> {
        self.lent_span(desc)?;
        self.area.bytes_mut(desc.addr as usize, desc.len as usize).map(|bytes| &*bytes)
    }

    /// The chunk of `desc` and the frame's offset in it, if the chunk is
    /// with the kernel and the frame lies inside it.
    #[inline]
    fn lent_span(&self, desc: &XdpDesc) -> Option<(usize, u32)> {
        let chunk = self.chunk_of(desc.addr)?;
        let offset = (desc.addr % u64::from(FRAME_SIZE)) as u32;
        let inside = u64::from(offset) + u64::from(desc.len) <= u64::from(FRAME_SIZE);
        (self.owners[chunk] == Owner::Kernel && inside).then_some((chunk, offset))
    }

    /// The bytes of each held frame, `out[i]` for `held[i]`, all at once.
    #[inline]
    pub fn frames_mut<'a>(&'a mut self, held: &[Held], out: &mut [&'a mut [u8]]) {
        let id = self.id;
        assert!(held.iter().all(|h| h.region == id), "a frame of another region");
        let spans = held.iter().map(|h| (h.addr() as usize, h.len as usize));
        // SAFETY: every `Held` of this region (checked above) is the only
        // one of its chunk and lies inside it (see `Held`: only `take` and
        // `receive` make one, each for a chunk they move to the worker
        // from elsewhere, and `send`/`release` consume it), so no two
        // spans share a byte.
        unsafe { self.area.disjoint_spans_mut(spans, out) }.expect("held frames lie inside their region");
    }

    #[inline]
    fn chunk_of(&self, addr: u64) -> Option<usize> {
        let chunk = usize::try_from(addr / u64::from(FRAME_SIZE)).ok()?;
        (chunk < self.owners.len()).then_some(chunk)
    }
}

/// Bytes a device copies at a time when the source is padded to them.
pub const COPY_BLOCK: usize = 64;

/// `into.copy_from_slice(bytes)`, as fixed-size moves the compiler inlines
/// when the length is a whole number of [`COPY_BLOCK`]s (no `memcpy` call
/// per frame: it showed in the in-memory device's profile).
#[inline]
fn copy_blocks(into: &mut [u8], bytes: &[u8]) {
    if !bytes.len().is_multiple_of(COPY_BLOCK) || into.len() != bytes.len() {
        into.copy_from_slice(bytes);
        return;
    }
    for (into, from) in into.chunks_exact_mut(COPY_BLOCK).zip(bytes.chunks_exact(COPY_BLOCK)) {
        let into: &mut [u8; COPY_BLOCK] = into.try_into().expect("chunks of COPY_BLOCK bytes");
        *into = *<&[u8; COPY_BLOCK]>::try_from(from).expect("chunks of COPY_BLOCK bytes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_moves_free_kernel_worker_and_back() {
        let mut region = Region::in_memory(2).unwrap();
        let addr = region.lend().unwrap();
        let desc = region.write_lent(addr, &[7; 60]).unwrap();
        let mut held = region.receive(desc).unwrap();
        // The same descriptor again is refused: the chunk is held already.
        assert!(region.receive(desc).is_none());
        assert_eq!(region.errors().bad_descriptors, 1);
        held.advance(20);
        let mut out: [&mut [u8]; 1] = [&mut []];
        region.frames_mut(std::slice::from_ref(&held), &mut out);
        assert_eq!(out[0].len(), 40);
        let sent = region.send(held);
        assert_eq!((sent.addr, sent.len), (addr + 20, 40));
        // A completion reports the address as sent; it frees the chunk.
        region.reclaim(sent.addr);
        assert_eq!(region.free_frames(), 2);
        region.reclaim(sent.addr);
        assert_eq!(region.errors().bad_descriptors, 2);
    }

    #[test]
    fn no_door_makes_a_second_held_frame_of_a_held_chunk() {
        let mut region = Region::in_memory(1).unwrap();
        let held = region.take(60).unwrap();
        let desc = held.descriptor();
        // The doors that hand a chunk to the worker, tried with the held
        // chunk: each refuses (and counts) or has nothing to give.
        assert!(region.receive(desc).is_none());
        region.reclaim(desc.addr);
        region.unlend(desc.addr);
        assert_eq!(region.errors().bad_descriptors, 3);
        assert!(region.take(60).is_none());
        assert!(region.lend().is_none());
        let mut out: [&mut [u8]; 1] = [&mut []];
        region.frames_mut(std::slice::from_ref(&held), &mut out);
        out[0].fill(1);
        region.release(held);
        assert_eq!(region.free_frames(), 1);
    }

    #[test]
    fn a_frame_moved_to_its_chunks_very_end_gives_back_its_own_chunk() {
        let mut region = Region::in_memory(2).unwrap();
        let (first, second) = (region.lend().unwrap(), region.lend().unwrap());
        let desc = region.write_lent(first, &[7; FRAME_SIZE as usize]).unwrap();
        let mut held = region.receive(desc).unwrap();
        held.advance(FRAME_SIZE as usize);
        assert!(held.is_empty());
        region.release(held);
        // The second chunk is still the kernel's: its completion frees it.
        region.reclaim(second);
        assert_eq!((region.free_frames(), region.errors().bad_descriptors), (2, 0));
    }

    #[test]
    #[should_panic(expected = "a frame of another region")]
    fn a_frame_of_another_region_is_refused() {
        let mut one = Region::in_memory(1).unwrap();
        let mut other = Region::in_memory(1).unwrap();
        let _mine = other.take(10).unwrap();
        let foreign = one.take(10).unwrap();
        other.release(foreign);
    }

    #[test]
    fn block_copies_write_what_a_plain_copy_writes() {
        let source: Vec<u8> = (0..=255u8).cycle().take(3 * COPY_BLOCK + 5).collect();
        // Whole blocks (the padded path) and the rest (the plain fallback).
        for len in [0, COPY_BLOCK, 2 * COPY_BLOCK, 66, 3 * COPY_BLOCK + 5] {
            let mut into = vec![0xee; len + 8];
            copy_blocks(&mut into[..len], &source[..len]);
            assert_eq!(into[..len], source[..len], "{len}");
            assert!(into[len..].iter().all(|&b| b == 0xee), "{len}: wrote past the end");
        }
    }

    #[test]
    fn descriptors_past_their_chunk_or_the_region_are_refused() {
        let mut region = Region::in_memory(1).unwrap();
        let addr = region.lend().unwrap();
        assert!(region.receive(XdpDesc { addr: addr + 4000, len: 200, options: 0 }).is_none());
        assert!(region.receive(XdpDesc { addr: 1 << 20, len: 10, options: 0 }).is_none());
        assert!(region.write_lent(addr, &[0; 5000]).is_none());
        assert!(region.receive(XdpDesc { addr, len: 10, options: 0 }).is_some());
    }
}
