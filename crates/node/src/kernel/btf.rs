//! A small reader for the BPF Type Format (`/sys/kernel/btf/vmlinux`).
//!
//! Only what the probe needs: byte offsets of struct members (following anonymous structs and
//! unions the way C does) and enum value names. The format is documented in the kernel's
//! `Documentation/bpf/btf.rst`.
use std::collections::HashMap;

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF data (bad magic or header)")]
    BadHeader,
    #[error("BTF data is truncated at byte {at}")]
    Truncated { at: usize },
    #[error("unknown BTF kind {kind} for type id {id}")]
    UnknownKind { id: u32, kind: u32 },
    #[error("no struct named `{name}` in the kernel's BTF")]
    NoStruct { name: String },
    #[error("struct `{strukt}` has no member `{member}` in the kernel's BTF")]
    NoMember { strukt: String, member: String },
    #[error("member `{path}` of struct `{strukt}` is a bitfield or not byte aligned")]
    NotByteAligned { strukt: String, path: String },
    #[error("no function pointer typedef `{name}` in the kernel's BTF")]
    NoTypedef { name: String },
    #[error("no enum named `{name}` in the kernel's BTF")]
    NoEnum { name: String },
}

#[derive(Clone, Copy, Debug)]
struct TypeEntry {
    name_off: u32,
    info: u32,
    size_or_type: u32,
    /// Byte offset of the kind-specific data that follows the common header.
    extra: usize,
}

impl TypeEntry {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }
}

/// Parsed BTF: the raw bytes plus an index from type id to its entry.
pub struct Btf {
    data: Vec<u8>,
    strings_at: usize,
    strings_len: usize,
    types: Vec<TypeEntry>,
    by_name: HashMap<(u32, String), u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Truncated { at })
}

impl Btf {
    /// Parses little-endian BTF (the only kind the probe targets).
    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(BtfError::BadHeader);
        }
        let hdr_len = u32_at(&data, 4)? as usize;
        let type_off = u32_at(&data, 8)? as usize;
        let type_len = u32_at(&data, 12)? as usize;
        let str_off = u32_at(&data, 16)? as usize;
        let str_len = u32_at(&data, 20)? as usize;
        let types_at = hdr_len + type_off;
        let types_end = types_at + type_len;
        let strings_at = hdr_len + str_off;
        if types_end > data.len() || strings_at + str_len > data.len() {
            return Err(BtfError::Truncated { at: data.len() });
        }
        // Type id 0 is `void`; ids count from 1 in section order.
        let mut types = vec![TypeEntry {
            name_off: 0,
            info: 0,
            size_or_type: 0,
            extra: 0,
        }];
        let mut at = types_at;
        while at < types_end {
            let entry = TypeEntry {
                name_off: u32_at(&data, at)?,
                info: u32_at(&data, at + 4)?,
                size_or_type: u32_at(&data, at + 8)?,
                extra: at + 12,
            };
            let vlen = entry.vlen();
            let extra_len = match entry.kind() {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                kind => {
                    return Err(BtfError::UnknownKind {
                        id: types.len() as u32,
                        kind,
                    })
                }
            };
            types.push(entry);
            at += 12 + extra_len;
        }
        if at != types_end {
            return Err(BtfError::Truncated { at });
        }
        let mut btf = Self {
            data,
            strings_at,
            strings_len: str_len,
            types,
            by_name: HashMap::new(),
        };
        let mut by_name = HashMap::new();
        for (id, t) in btf.types.iter().enumerate().skip(1) {
            if matches!(
                t.kind(),
                KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_TYPEDEF
            ) && t.name_off != 0
            {
                by_name
                    .entry((t.kind(), btf.name(t.name_off).to_owned()))
                    .or_insert(id as u32);
            }
        }
        btf.by_name = by_name;
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let start = self.strings_at + off as usize;
        let end_limit = self.strings_at + self.strings_len;
        if start >= end_limit {
            return "";
        }
        let bytes = &self.data[start..end_limit];
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..len]).unwrap_or("")
    }

    fn entry(&self, id: u32) -> Option<&TypeEntry> {
        self.types.get(id as usize)
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.entry(id) {
                Some(t)
                    if matches!(
                        t.kind(),
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.size_or_type
                }
                _ => break,
            }
        }
        id
    }

    /// (name, type id, bit offset, bitfield size) of each member of a struct or union.
    fn members(&self, id: u32) -> Vec<(&str, u32, u32, u32)> {
        let Some(t) = self.entry(id) else {
            return Vec::new();
        };
        if !matches!(t.kind(), KIND_STRUCT | KIND_UNION) {
            return Vec::new();
        }
        (0..t.vlen())
            .filter_map(|i| {
                let at = t.extra + i * 12;
                let name_off = u32_at(&self.data, at).ok()?;
                let ty = u32_at(&self.data, at + 4).ok()?;
                let off = u32_at(&self.data, at + 8).ok()?;
                let (bits, size) = if t.kind_flag() {
                    (off & 0xff_ffff, off >> 24)
                } else {
                    (off, 0)
                };
                Some((self.name(name_off), ty, bits, size))
            })
            .collect()
    }

    /// Finds `name` among the members of `id`, descending into anonymous members.
    /// Returns (type id of the member, bit offset from the start of `id`, bitfield size).
    fn find_member(&self, id: u32, name: &str) -> Option<(u32, u32, u32)> {
        for (mname, ty, bits, size) in self.members(id) {
            if mname == name {
                return Some((ty, bits, size));
            }
            if mname.is_empty() {
                if let Some((t, b, s)) = self.find_member(self.resolve(ty), name) {
                    return Some((t, bits + b, s));
                }
            }
        }
        None
    }

    /// Byte offset of a dotted member path (`"__sk_common.skc_net.net"`) in `struct strukt`.
    pub fn member_offset(&self, strukt: &str, path: &str) -> Result<usize, BtfError> {
        let mut id = self
            .by_name
            .get(&(KIND_STRUCT, strukt.to_owned()))
            .copied()
            .ok_or_else(|| BtfError::NoStruct {
                name: strukt.to_owned(),
            })?;
        let mut bits = 0u32;
        for part in path.split('.') {
            let (ty, b, size) = self
                .find_member(id, part)
                .ok_or_else(|| BtfError::NoMember {
                    strukt: strukt.to_owned(),
                    member: path.to_owned(),
                })?;
            if size != 0 {
                return Err(BtfError::NotByteAligned {
                    strukt: strukt.to_owned(),
                    path: path.to_owned(),
                });
            }
            bits += b;
            id = self.resolve(ty);
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::NotByteAligned {
                strukt: strukt.to_owned(),
                path: path.to_owned(),
            });
        }
        Ok((bits / 8) as usize)
    }

    /// A type as C would spell it (`struct sock *`, `int`), qualifiers and typedefs dropped.
    fn describe(&self, id: u32) -> String {
        let id = self.resolve(id);
        let Some(t) = self.entry(id) else {
            return "?".into();
        };
        let name = self.name(t.name_off);
        match t.kind() {
            _ if id == 0 => "void".into(),
            KIND_PTR => format!("{} *", self.describe(t.size_or_type)),
            KIND_STRUCT => format!("struct {name}"),
            KIND_UNION => format!("union {name}"),
            KIND_ENUM | KIND_ENUM64 => format!("enum {name}"),
            _ => name.into(),
        }
    }

    /// Parameter types of the function that `typedef R (*typedef)(...)` points to. The
    /// kernel declares one such typedef per tracepoint (`btf_trace_<name>`), which is how a
    /// raw tracepoint's arguments are known.
    pub fn fn_pointer_params(&self, typedef: &str) -> Result<Vec<String>, BtfError> {
        let not_found = || BtfError::NoTypedef {
            name: typedef.to_owned(),
        };
        let id = self
            .by_name
            .get(&(KIND_TYPEDEF, typedef.to_owned()))
            .copied()
            .ok_or_else(not_found)?;
        let ptr = self
            .entry(self.types[id as usize].size_or_type)
            .filter(|t| t.kind() == KIND_PTR)
            .ok_or_else(not_found)?;
        let proto = self
            .entry(ptr.size_or_type)
            .filter(|t| t.kind() == KIND_FUNC_PROTO)
            .ok_or_else(not_found)?;
        (0..proto.vlen())
            .map(|i| Ok(self.describe(u32_at(&self.data, proto.extra + i * 8 + 4)?)))
            .collect()
    }

    /// Value -> name of every enumerator of `enum name`.
    pub fn enum_values(&self, name: &str) -> Result<HashMap<u64, String>, BtfError> {
        let (kind, id) = [KIND_ENUM, KIND_ENUM64]
            .iter()
            .find_map(|k| self.by_name.get(&(*k, name.to_owned())).map(|id| (*k, *id)))
            .ok_or_else(|| BtfError::NoEnum {
                name: name.to_owned(),
            })?;
        let t = self.types[id as usize];
        let width = if kind == KIND_ENUM { 8 } else { 12 };
        let mut out = HashMap::new();
        for i in 0..t.vlen() {
            let at = t.extra + i * width;
            let name = self.name(u32_at(&self.data, at)?).to_owned();
            let lo = u32_at(&self.data, at + 4)? as u64;
            let value = if kind == KIND_ENUM {
                lo
            } else {
                lo | (u32_at(&self.data, at + 8)? as u64) << 32
            };
            out.insert(value, name);
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds BTF bytes from (name, info, size_or_type, extra words) entries.
    pub(crate) struct Builder {
        strings: Vec<u8>,
        types: Vec<u8>,
    }

    impl Builder {
        pub(crate) fn new() -> Self {
            Self {
                strings: vec![0],
                types: Vec::new(),
            }
        }
        pub(crate) fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }
        pub(crate) fn ty(
            &mut self,
            name: &str,
            kind: u32,
            vlen: u32,
            kflag: bool,
            size: u32,
            extra: &[u32],
        ) {
            let name = self.str(name);
            let info = (kind << 24) | vlen | if kflag { 1 << 31 } else { 0 };
            for w in [name, info, size].iter().chain(extra) {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }
        pub(crate) fn build(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for w in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// struct inner { int a; int b; };                       id 2
    /// struct outer { long x; union { int u; struct inner in; }; int bf:3; };  id 4 (anon union id 3)
    /// enum color { RED = 1, BLUE = 7 };                      id 5
    fn sample() -> Btf {
        let mut b = Builder::new();
        b.ty("int", KIND_INT, 0, false, 4, &[32]); // 1
        let (a, bb) = (b.str("a"), b.str("b"));
        b.ty("inner", KIND_STRUCT, 2, false, 8, &[a, 1, 0, bb, 1, 32]); // 2
        let (u, inn) = (b.str("u"), b.str("in"));
        b.ty("", KIND_UNION, 2, false, 8, &[u, 1, 0, inn, 2, 0]); // 3
        let (x, bf) = (b.str("x"), b.str("bf"));
        b.ty(
            "outer",
            KIND_STRUCT,
            3,
            true,
            24,
            &[x, 1, 0, 0, 3, 64, bf, 1, (3 << 24) | 128],
        ); // 4
        let (red, blue) = (b.str("RED"), b.str("BLUE"));
        b.ty("color", KIND_ENUM, 2, false, 4, &[red, 1, blue, 7]); // 5
        b.ty("", KIND_FUNC_PROTO, 2, false, 0, &[0, 8, 0, 1]); // 6: void (*)(void *, int)
        b.ty("", KIND_PTR, 0, false, 0, &[]); // 7: void *
        b.ty("", KIND_PTR, 0, false, 6, &[]); // 8: pointer to the proto... reused as a param below
        b.ty("btf_trace_thing", KIND_TYPEDEF, 0, false, 10, &[]); // 9
        b.ty("", KIND_PTR, 0, false, 6, &[]); // 10
        Btf::parse(b.build()).expect("sample BTF parses")
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_nested_structs() {
        let btf = sample();
        assert_eq!(btf.member_offset("outer", "x"), Ok(0));
        assert_eq!(btf.member_offset("outer", "u"), Ok(8));
        assert_eq!(btf.member_offset("outer", "in.b"), Ok(12));
        assert_eq!(btf.member_offset("inner", "b"), Ok(4));
    }

    #[test]
    fn reports_what_is_missing() {
        let btf = sample();
        assert_eq!(
            btf.member_offset("outer", "in.zz"),
            Err(BtfError::NoMember {
                strukt: "outer".into(),
                member: "in.zz".into()
            })
        );
        assert!(matches!(
            btf.member_offset("nope", "x"),
            Err(BtfError::NoStruct { .. })
        ));
        assert!(matches!(
            btf.member_offset("outer", "bf"),
            Err(BtfError::NotByteAligned { .. })
        ));
    }

    #[test]
    fn reads_function_pointer_typedefs() {
        let btf = sample();
        let params = btf
            .fn_pointer_params("btf_trace_thing")
            .expect("typedef exists");
        assert_eq!(params.len(), 2);
        assert_eq!(params[1], "int");
        assert!(matches!(
            btf.fn_pointer_params("btf_trace_nope"),
            Err(BtfError::NoTypedef { .. })
        ));
    }

    #[test]
    fn reads_enum_names() {
        let values = sample().enum_values("color").expect("enum exists");
        assert_eq!(values.get(&7).map(String::as_str), Some("BLUE"));
        assert_eq!(values.get(&1).map(String::as_str), Some("RED"));
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert!(matches!(Btf::parse(vec![0; 10]), Err(BtfError::BadHeader)));
        let mut bytes = {
            let mut b = Builder::new();
            b.ty("int", KIND_INT, 0, false, 4, &[32]);
            b.build()
        };
        bytes.truncate(30);
        assert!(matches!(Btf::parse(bytes), Err(BtfError::Truncated { .. })));
    }
}
