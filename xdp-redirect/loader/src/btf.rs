//! Field offsets of kernel structs, read from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`): what the TC programs need to read a
//! TIME_WAIT socket ([`TimeWaitLayout`]), whose layout changes between
//! kernel builds. A small reader of the BTF format (the kernel's
//! Documentation/bpf/btf.rst): aya-obj parses BTF but keeps struct
//! members to itself.

use heels_common::time_wait::TimeWaitLayout;

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Why offsets could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not BTF, or cut short.
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    /// A kind this reader does not know (a newer kernel's).
    #[error("BTF type kind {0} is not known to this reader")]
    UnknownKind(u32),
    /// No struct of that name.
    #[error("no struct {0} in the kernel's BTF")]
    NoStruct(String),
    /// No member on that path.
    #[error("no member {path} in struct {name}")]
    NoMember {
        /// The struct.
        name: String,
        /// The member path, dotted.
        path: String,
    },
    /// A member that is a bit field, or at an offset the programs cannot use.
    #[error("member {0} is a bit field or too far into its struct")]
    Unusable(String),
}

#[derive(Debug, Clone, Copy)]
struct Member {
    name: u32,
    ty: u32,
    /// Bit offset; with the bit-field size in its top byte when the
    /// struct's kind flag is set.
    offset: u32,
}

#[derive(Debug, Clone)]
enum Type {
    /// A struct or union and its members, with the kind flag.
    Composite {
        name: u32,
        members: Vec<Member>,
        kind_flag: bool,
    },
    /// A typedef or modifier of another type.
    Alias(u32),
    Other,
}

/// The types and strings of one BTF blob.
#[derive(Debug)]
pub struct Btf {
    /// Index = type id (0 is void).
    types: Vec<Type>,
    strings: Vec<u8>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("cut short"))
}

impl Btf {
    /// The running kernel's.
    pub fn from_kernel() -> Result<Self, BtfError> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).map_err(|source| BtfError::Read { path: path.into(), source })?;
        Self::parse(&data)
    }

    /// Parses a little-endian BTF blob (header, types, strings).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < HEADER_LEN || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(BtfError::Malformed("no BTF magic"));
        }
        let header_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let section = |off: usize, len: usize| {
            data.get(header_len + off..header_len + off + len)
                .ok_or(BtfError::Malformed("section out of bounds"))
        };
        let type_data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();
        let mut types = vec![Type::Other];
        let mut at = 0;
        while at < type_data.len() {
            let name = u32_at(type_data, at)?;
            let info = u32_at(type_data, at + 4)?;
            let size_or_type = u32_at(type_data, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                2 | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12 | 16
                | KIND_TYPE_TAG => 0,
                other => return Err(BtfError::UnknownKind(other)),
            };
            let ty = match kind {
                KIND_STRUCT | KIND_UNION => {
                    let members = (0..vlen)
                        .map(|i| {
                            let m = at + 12 * i;
                            Ok(Member {
                                name: u32_at(type_data, m)?,
                                ty: u32_at(type_data, m + 4)?,
                                offset: u32_at(type_data, m + 8)?,
                            })
                        })
                        .collect::<Result<_, BtfError>>()?;
                    Type::Composite { name, members, kind_flag }
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Type::Alias(size_or_type)
                }
                _ => Type::Other,
            };
            types.push(ty);
            at += extra;
        }
        Ok(Btf { types, strings })
    }

    fn name(&self, offset: u32) -> &[u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// The struct or union a type id is, through typedefs and modifiers.
    fn composite(&self, mut id: u32) -> Option<(&[Member], bool)> {
        for _ in 0..16 {
            match self.types.get(id as usize)? {
                Type::Alias(to) => id = *to,
                Type::Composite { members, kind_flag, .. } => return Some((members, *kind_flag)),
                Type::Other => return None,
            }
        }
        None
    }

    /// Byte offset of the member at `path` (names of nested members; an
    /// anonymous struct or union on the way is looked into) in `struct name`.
    pub fn offset_of(&self, name: &str, path: &[&str]) -> Result<u32, BtfError> {
        let no_member = || BtfError::NoMember { name: name.into(), path: path.join(".") };
        let id = self
            .types
            .iter()
            .position(|t| matches!(t, Type::Composite { name: n, .. } if self.name(*n) == name.as_bytes()))
            .ok_or_else(|| BtfError::NoStruct(name.into()))? as u32;
        let mut bits = 0;
        let mut ty = id;
        for part in path {
            let (offset, member) = self.find(ty, part.as_bytes(), 0).ok_or_else(no_member)?;
            bits += offset;
            ty = member;
        }
        if bits % 8 != 0 {
            return Err(BtfError::Unusable(path.join(".")));
        }
        Ok(bits / 8)
    }

    /// The bit offset and type of member `name` of composite `ty`, looking
    /// into anonymous members.
    fn find(&self, ty: u32, name: &[u8], depth: u32) -> Option<(u32, u32)> {
        if depth > 8 {
            return None;
        }
        let (members, kind_flag) = self.composite(ty)?;
        for member in members {
            let (bit_size, offset) =
                if kind_flag { (member.offset >> 24, member.offset & 0xff_ffff) } else { (0, member.offset) };
            if member.name == 0 {
                if let Some((inner, ty)) = self.find(member.ty, name, depth + 1) {
                    return Some((offset + inner, ty));
                }
            } else if self.name(member.name) == name {
                // A bit field's offset is no byte's.
                return (bit_size == 0).then_some((offset, member.ty));
            }
        }
        None
    }
}

/// Where the running kernel keeps what a TIME_WAIT compares a SYN with.
pub fn time_wait_layout(btf: &Btf) -> Result<TimeWaitLayout, BtfError> {
    let field = |path: &[&str]| -> Result<u16, BtfError> {
        let offset = btf.offset_of("tcp_timewait_sock", path)?;
        u16::try_from(offset)
            .ok()
            .filter(|&o| o != 0 && o <= TimeWaitLayout::MAX_OFFSET)
            .ok_or_else(|| BtfError::Unusable(path.join(".")))
    };
    Ok(TimeWaitLayout {
        substate: field(&["tw_sk", "tw_substate"])?,
        rcv_nxt: field(&["tw_sk", "__tw_common", "skc_tw_rcv_nxt"])?,
        ts_recent: field(&["tw_ts_recent"])?,
        ts_recent_stamp: field(&["tw_ts_recent_stamp"])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob of: int; struct inner { int a; union { int b; int c; }; };
    /// struct outer { int x; struct inner in; int bits:3; }.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0b\0c\0outer\0x\0in\0bits\0".to_vec();
        let name = |s: &str| {
            let needle = [b"\0", s.as_bytes(), b"\0"].concat();
            strings.windows(needle.len()).position(|w| w == needle.as_slice()).unwrap() as u32 + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend_from_slice(&w.to_le_bytes()));
        // 1: int (4 bytes, 32 bits).
        push(&[name("int"), KIND_INT << 24, 4, 32]);
        // 2: the anonymous union { b; c; }.
        push(&[0, KIND_UNION << 24 | 2, 4, name("b"), 1, 0, name("c"), 1, 0]);
        // 3: struct inner { a at 0; union at 32 bits }.
        push(&[name("inner"), KIND_STRUCT << 24 | 2, 8, name("a"), 1, 0, 0, 2, 32]);
        // 4: typedef inner_t = inner (a modifier on the way).
        push(&[name("inner"), KIND_TYPEDEF << 24, 3]);
        // 5: struct outer { x at 0; in at 64 bits; bits:3 at 128 } (kind flag).
        push(&[
            name("outer"),
            1 << 31 | KIND_STRUCT << 24 | 3,
            20,
            name("x"),
            1,
            0,
            name("in"),
            4,
            64,
            name("bits"),
            1,
            3 << 24 | 128,
        ]);
        let mut data = Vec::new();
        data.extend_from_slice(&MAGIC.to_le_bytes());
        data.extend_from_slice(&[1, 0]);
        for word in [HEADER_LEN as u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            data.extend_from_slice(&word.to_le_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(&strings);
        data
    }

    #[test]
    fn offsets_go_through_nested_structs_typedefs_and_anonymous_unions() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.offset_of("outer", &["x"]).unwrap(), 0);
        assert_eq!(btf.offset_of("outer", &["in", "a"]).unwrap(), 8);
        assert_eq!(btf.offset_of("outer", &["in", "c"]).unwrap(), 12);
        assert_eq!(btf.offset_of("inner", &["b"]).unwrap(), 4);
    }

    #[test]
    fn missing_names_bit_fields_and_bad_blobs_are_errors() {
        let btf = Btf::parse(&blob()).unwrap();
        assert!(matches!(btf.offset_of("outer", &["in", "z"]), Err(BtfError::NoMember { .. })));
        assert!(matches!(btf.offset_of("nowhere", &["x"]), Err(BtfError::NoStruct(_))));
        assert!(matches!(btf.offset_of("outer", &["bits"]), Err(BtfError::NoMember { .. })));
        assert!(matches!(Btf::parse(&blob()[..30]), Err(BtfError::Malformed(_))));
        assert!(matches!(Btf::parse(b"not btf at all, not at all"), Err(BtfError::Malformed(_))));
    }

    /// The running kernel's layout (every machine this runs on has BTF:
    /// the programs need it).
    #[test]
    fn the_running_kernels_time_wait_layout_is_read() {
        let layout = time_wait_layout(&Btf::from_kernel().unwrap()).unwrap();
        assert!(layout.is_known(), "{layout:?}");
        // tw_rcv_nxt is in the sock_common at the start; the timestamps
        // follow the inet_timewait_sock.
        assert!(layout.rcv_nxt < layout.substate && layout.substate < layout.ts_recent, "{layout:?}");
        assert_eq!(
            layout.ts_recent_stamp,
            layout.ts_recent + 8,
            "tw_ts_recent, tw_last_oow_ack_time, tw_ts_recent_stamp: {layout:?}"
        );
    }
}
