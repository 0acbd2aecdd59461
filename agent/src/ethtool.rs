//! A link's offloads and queues through the kernel's ethtool interface
//! (the `SIOCETHTOOL` ioctl, which the `ethtool` tool also speaks): what
//! the agent used to run `ethtool -K` and `ethtool -l` for.
//!
//! The ioctl and not the ethtool netlink family: the family is a generic
//! netlink one (its id looked up first, features set as named bitsets),
//! and no kept crate speaks it without an async runtime of its own; the
//! ioctl's few fixed commands are the ones the kernel keeps for exactly
//! these settings (`ethtool_set_one_feature`, `ethtool_get_channels`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::Context;

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_SFEATURES: u32 = 0x3b;
const ETHTOOL_GCHANNELS: u32 = 0x3c;
/// The string set of feature names.
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;
/// Feature bits a request can name (the kernel has fewer than 64 today;
/// more blocks cost nothing).
const FEATURE_BLOCKS: usize = 4;

/// `struct ethtool_sset_info` asking for one set.
#[repr(C)]
struct SsetInfo {
    cmd: u32,
    reserved: u32,
    sset_mask: u64,
    length: u32,
}

/// `struct ethtool_gstrings` with room for the feature names.
#[repr(C)]
struct Strings {
    cmd: u32,
    string_set: u32,
    len: u32,
    data: [[u8; ETH_GSTRING_LEN]; FEATURE_BLOCKS * 32],
}

/// `struct ethtool_gfeatures`.
#[repr(C)]
struct GetFeatures {
    cmd: u32,
    size: u32,
    /// `{ available, requested, active, never_changed }` per block.
    features: [[u32; 4]; FEATURE_BLOCKS],
}

/// `struct ethtool_sfeatures`.
#[repr(C)]
struct SetFeatures {
    cmd: u32,
    size: u32,
    /// `{ valid, requested }` per block of 32 features.
    features: [[u32; 2]; FEATURE_BLOCKS],
}

/// `struct ethtool_channels`.
#[repr(C)]
#[derive(Default)]
struct Channels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

/// `struct ifreq` with `ifr_data`.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
}

/// Runs ethtool command `command` (a `#[repr(C)]` ethtool struct whose
/// first field is its command) on link `name`.
fn ioctl<T>(name: &str, command: &mut T) -> std::io::Result<()> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::from_raw_os_error(libc::ENODEV));
    }
    // SAFETY: socket(2) with constant arguments; the descriptor is owned
    // by the OwnedFd just below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut request = IfReq { name: [0; libc::IFNAMSIZ], data: (command as *mut T).cast() };
    for (slot, byte) in request.name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: SIOCETHTOOL reads the ifreq and, through `data`, the
    // command's struct (of the size its command implies), both alive and
    // exclusively borrowed for the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &mut request) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `feature` is one `ethtool -K tx off tso off gso off` turns off
/// (the tool's own name patterns: `tx-checksum-*`, `tx-tcp*-segmentation`,
/// `tx-generic-segmentation`). By name, not by the old fixed commands
/// (`ETHTOOL_STSO`), which miss TSO features newer than they are (6.18's
/// `tx-tcp-accecn-segmentation`).
fn turned_off(feature: &str) -> bool {
    feature.starts_with("tx-checksum-")
        || (feature.starts_with("tx-tcp") && feature.ends_with("-segmentation"))
        || feature == "tx-generic-segmentation"
}

/// `ethtool -K NAME tx off tso off gso off`: the stack finishes checksums
/// and segments before a frame reaches the link.
pub fn disable_offloads(name: &str) -> anyhow::Result<()> {
    let mut info =
        SsetInfo { cmd: ETHTOOL_GSSET_INFO, reserved: 0, sset_mask: 1 << ETH_SS_FEATURES, length: 0 };
    ioctl(name, &mut info).with_context(|| format!("counting the features of {name}"))?;
    let count = info.length as usize;
    if info.sset_mask == 0 || count > FEATURE_BLOCKS * 32 {
        anyhow::bail!("{name} has {count} features, more than this agent can name");
    }
    let mut strings = Strings {
        cmd: ETHTOOL_GSTRINGS,
        string_set: ETH_SS_FEATURES,
        len: count as u32,
        data: [[0; ETH_GSTRING_LEN]; FEATURE_BLOCKS * 32],
    };
    ioctl(name, &mut strings).with_context(|| format!("naming the features of {name}"))?;
    let mut current = GetFeatures {
        cmd: ETHTOOL_GFEATURES,
        size: FEATURE_BLOCKS as u32,
        features: [[0; 4]; FEATURE_BLOCKS],
    };
    ioctl(name, &mut current).with_context(|| format!("reading the features of {name}"))?;
    // The set takes exactly the kernel's number of blocks, which the get
    // wrote back.
    let mut request =
        SetFeatures { cmd: ETHTOOL_SFEATURES, size: current.size, features: [[0; 2]; FEATURE_BLOCKS] };
    for (bit, text) in strings.data[..count].iter().enumerate() {
        let end = text.iter().position(|&b| b == 0).unwrap_or(ETH_GSTRING_LEN);
        let (block, mask) = (bit / 32, 1u32 << (bit % 32));
        let [available, _, _, never_changed] = current.features[block];
        // A fixed feature (`[fixed]` in `ethtool -k`) cannot be asked for.
        let changeable = available & mask != 0 && never_changed & mask == 0;
        if changeable && turned_off(std::str::from_utf8(&text[..end]).unwrap_or("")) {
            // Valid (to be set), requested off.
            request.features[block][0] |= mask;
        }
    }
    ioctl(name, &mut request)
        .with_context(|| format!("turning checksum and segmentation offloads off on {name}"))
}

/// The receive queues in use on `name` (its current RX plus combined
/// channels: the queues allocated can be more, and an AF_XDP socket
/// cannot bind past the ones in use). 1 when the driver does not say.
pub fn rx_queues(name: &str) -> u32 {
    let mut channels = Channels { cmd: ETHTOOL_GCHANNELS, ..Channels::default() };
    match ioctl(name, &mut channels) {
        Ok(()) => Some(channels.rx_count + channels.combined_count).filter(|&n| n > 0).unwrap_or(1),
        Err(_) => 1,
    }
}
