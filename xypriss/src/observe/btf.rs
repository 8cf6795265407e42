//! The kernel's own BTF, read at load time: what each raw tracepoint passes
//! its program (the `btf_trace_<name>` typedefs hold every tracepoint's
//! prototype), and where the fields the programs read are. Rust BPF has no
//! CO-RE, so the offsets found here are written into the programs' globals,
//! and the prototype decides which variant of a program is loaded.
//!
//! aya parses BTF, but keeps type lookup private; this reader does the few
//! things needed: a dotted field path to a byte offset (through anonymous
//! structs and unions, typedefs and qualifiers), a field's type, and a
//! function prototype's parameters.
//!
//! Over 600 lines with its unit tests; the reading itself is the first 390.

use std::{fs, io, path::Path};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
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

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF)")]
    Read { path: String, source: io::Error },
    #[error("{path}: not BTF ({reason})")]
    Malformed { path: String, reason: &'static str },
    #[error("BTF: no struct `{name}`")]
    NoStruct { name: String },
    #[error("BTF: struct `{strukt}` has no field `{field}`")]
    NoField { strukt: String, field: String },
    #[error("BTF: `{path}` is {found}, not {expected}")]
    FieldType {
        path: String,
        found: String,
        expected: &'static str,
    },
    #[error("BTF: no `btf_trace_{name}`: this kernel has no `{name}` tracepoint")]
    NoTracepoint { name: String },
    #[error("BTF: tracepoint `{name}` passes ({found}), where the programs know {expected}")]
    Prototype {
        name: String,
        found: String,
        expected: &'static str,
    },
}

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    ty: u32,
    /// Offset in bits (bitfields are not needed here).
    bit_offset: u32,
}

#[derive(Debug, Clone)]
enum Type {
    /// STRUCT or UNION.
    Composite {
        name: u32,
        size: u32,
        members: Vec<Member>,
    },
    /// TYPEDEF (with its name), CONST, VOLATILE, RESTRICT, TYPE_TAG (without):
    /// resolve to the next type.
    Alias {
        name: u32,
        next: u32,
    },
    Array {
        elem: u32,
        len: u32,
    },
    Pointer {
        to: u32,
    },
    Int {
        name: u32,
        /// In bytes.
        size: u32,
    },
    /// A function prototype's parameter types.
    Prototype {
        params: Vec<u32>,
    },
    Other,
}

/// A parameter or field type, as much of it as the variant choices need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    /// A pointer to the struct or union of that name ("" for any other pointee).
    Pointer(String),
    /// An integer (bool included) of that name and size in bytes.
    Int {
        name: String,
        size: u32,
    },
    /// A struct or union, by name.
    Composite(String),
    Other,
}

impl std::fmt::Display for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pointer(to) if to.is_empty() => f.write_str("void *"),
            Self::Pointer(to) => write!(f, "struct {to} *"),
            Self::Int { name, .. } => f.write_str(name),
            Self::Composite(name) => write!(f, "struct {name}"),
            Self::Other => f.write_str("?"),
        }
    }
}

/// The parsed types and strings of a BTF blob.
pub struct Btf {
    /// Index = type id; 0 is void.
    types: Vec<Type>,
    strings: Vec<u8>,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let display = path.display().to_string();
        let data = fs::read(path).map_err(|source| BtfError::Read {
            path: display.clone(),
            source,
        })?;
        Self::parse(&data).map_err(|reason| BtfError::Malformed {
            path: display,
            reason,
        })
    }

    /// Parses a little-endian BTF blob.
    pub fn parse(data: &[u8]) -> Result<Self, &'static str> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err("bad magic");
        }
        let field = |at| u32_at(data, at).map(|v| v as usize).ok_or("short header");
        let hdr_len = field(4)?;
        let (type_off, type_len) = (field(8)?, field(12)?);
        let (str_off, str_len) = (field(16)?, field(20)?);
        let types_start = hdr_len + type_off;
        let section = data
            .get(types_start..types_start + type_len)
            .ok_or("type section out of bounds")?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or("string section out of bounds")?
            .to_vec();
        let mut types = vec![Type::Other];
        let mut at = 0;
        while at < section.len() {
            let word = |i: usize| u32_at(section, at + i * 4).ok_or("truncated type");
            let name = word(0)?;
            let info = word(1)?;
            let size_or_type = word(2)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 != 0;
            at += 12;
            let (ty, extra) = match kind {
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = |j: usize| {
                            u32_at(section, at + i * 12 + j * 4).ok_or("truncated member")
                        };
                        let offset = m(2)?;
                        members.push(Member {
                            name: m(0)?,
                            ty: m(1)?,
                            bit_offset: if kind_flag {
                                offset & 0xff_ffff
                            } else {
                                offset
                            },
                        });
                    }
                    (
                        Type::Composite {
                            name,
                            size: size_or_type,
                            members,
                        },
                        vlen * 12,
                    )
                }
                KIND_ARRAY => {
                    let elem = u32_at(section, at).ok_or("truncated array")?;
                    let len = u32_at(section, at + 8).ok_or("truncated array")?;
                    (Type::Array { elem, len }, 12)
                }
                KIND_TYPEDEF => (
                    Type::Alias {
                        name,
                        next: size_or_type,
                    },
                    0,
                ),
                KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => (
                    Type::Alias {
                        name: 0,
                        next: size_or_type,
                    },
                    0,
                ),
                KIND_PTR => (Type::Pointer { to: size_or_type }, 0),
                KIND_INT => (
                    Type::Int {
                        name,
                        size: size_or_type,
                    },
                    4,
                ),
                KIND_FUNC_PROTO => {
                    let params = (0..vlen)
                        .map(|i| u32_at(section, at + i * 8 + 4).ok_or("truncated prototype"))
                        .collect::<Result<_, _>>()?;
                    (Type::Prototype { params }, vlen * 8)
                }
                KIND_VAR | KIND_DECL_TAG => (Type::Other, 4),
                KIND_ENUM => (Type::Other, vlen * 8),
                KIND_DATASEC | KIND_ENUM64 => (Type::Other, vlen * 12),
                7 | 12 | 16 => (Type::Other, 0),
                _ => return Err("unknown BTF kind"),
            };
            at += extra;
            types.push(ty);
        }
        Ok(Self { types, strings })
    }

    /// How many types it has.
    pub fn type_count(&self) -> usize {
        self.types.len() - 1
    }

    fn name(&self, offset: u32) -> &[u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// Follows aliases to the underlying type id.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(Type::Alias { next, .. }) => id = *next,
                _ => break,
            }
        }
        id
    }

    fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        self.types
            .iter()
            .position(|t| matches!(t, Type::Composite { name: n, members, .. } if self.name(*n) == name.as_bytes() && !members.is_empty()))
            .map(|i| i as u32)
            .ok_or_else(|| BtfError::NoStruct { name: name.into() })
    }

    /// The byte offset of `field` in composite `id`, looking into anonymous
    /// members; returns it with the field's type id.
    fn field(&self, id: u32, field: &str) -> Option<(u32, u32)> {
        let Type::Composite { members, .. } = self.types.get(self.resolve(id) as usize)? else {
            return None;
        };
        for m in members {
            let name = self.name(m.name);
            if name == field.as_bytes() {
                return Some((m.bit_offset / 8, m.ty));
            }
            if name.is_empty()
                && let Some((inner, ty)) = self.field(m.ty, field)
            {
                return Some((m.bit_offset / 8 + inner, ty));
            }
        }
        None
    }

    /// The byte offset of `strukt.field`.
    pub fn offset(&self, strukt: &str, field: &str) -> Result<u32, BtfError> {
        let id = self.struct_id(strukt)?;
        self.field(id, field)
            .map(|(offset, _)| offset)
            .ok_or_else(|| BtfError::NoField {
                strukt: strukt.into(),
                field: field.into(),
            })
    }

    /// The type of `strukt.field`.
    fn field_type(&self, strukt: &str, field: &str) -> Result<u32, BtfError> {
        let id = self.struct_id(strukt)?;
        self.field(id, field)
            .map(|(_, ty)| ty)
            .ok_or_else(|| BtfError::NoField {
                strukt: strukt.into(),
                field: field.into(),
            })
    }

    /// What type `id` is, through aliases.
    fn param(&self, id: u32) -> Param {
        let name = |n| String::from_utf8_lossy(self.name(n)).into_owned();
        match self.types.get(self.resolve(id) as usize) {
            Some(Type::Pointer { to }) => match self.types.get(self.resolve(*to) as usize) {
                Some(Type::Composite { name: n, .. }) => Param::Pointer(name(*n)),
                _ => Param::Pointer(String::new()),
            },
            Some(Type::Int { name: n, size }) => Param::Int {
                name: name(*n),
                size: *size,
            },
            Some(Type::Composite { name: n, .. }) => Param::Composite(name(*n)),
            _ => Param::Other,
        }
    }

    /// The type of `strukt.field`, as a [`Param`].
    pub fn field_param(&self, strukt: &str, field: &str) -> Result<Param, BtfError> {
        self.field_type(strukt, field).map(|ty| self.param(ty))
    }

    /// Array field `strukt.field`: its element type, the element's size in
    /// bytes, and its length.
    pub fn array_field(&self, strukt: &str, field: &str) -> Result<(Param, u32, u32), BtfError> {
        let ty = self.field_type(strukt, field)?;
        match self.types.get(self.resolve(ty) as usize) {
            Some(Type::Array { elem, len }) => {
                let size = match self.types.get(self.resolve(*elem) as usize) {
                    Some(Type::Composite { size, .. } | Type::Int { size, .. }) => *size,
                    _ => 0,
                };
                Ok((self.param(*elem), size, *len))
            }
            _ => Err(BtfError::FieldType {
                path: format!("{strukt}.{field}"),
                found: self.param(ty).to_string(),
                expected: "an array",
            }),
        }
    }

    /// The arguments raw tracepoint `name` passes its programs: its
    /// `btf_trace_<name>` prototype, without the leading `void *__data`.
    pub fn tracepoint_args(&self, name: &str) -> Result<Vec<Param>, BtfError> {
        let typedef = format!("btf_trace_{name}");
        let missing = || BtfError::NoTracepoint { name: name.into() };
        let next = self
            .types
            .iter()
            .find_map(|t| match t {
                Type::Alias { name: n, next } if self.name(*n) == typedef.as_bytes() => Some(*next),
                _ => None,
            })
            .ok_or_else(missing)?;
        let Some(Type::Pointer { to }) = self.types.get(self.resolve(next) as usize) else {
            return Err(missing());
        };
        let Some(Type::Prototype { params }) = self.types.get(self.resolve(*to) as usize) else {
            return Err(missing());
        };
        Ok(params.iter().skip(1).map(|&p| self.param(p)).collect())
    }
}

/// Builds BTF blobs for tests: enough kinds to describe the kernels the
/// programs know, one type at a time.
#[cfg(test)]
pub(crate) mod builder {
    use super::*;

    #[derive(Default)]
    pub struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        count: u32,
    }

    impl Builder {
        pub fn new() -> Self {
            Self {
                strings: vec![0],
                ..Self::default()
            }
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let at = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            at
        }

        fn push(&mut self, words: &[u32]) -> u32 {
            words
                .iter()
                .for_each(|w| self.types.extend_from_slice(&w.to_le_bytes()));
            self.count += 1;
            self.count
        }

        pub fn int(&mut self, name: &str, size: u32) -> u32 {
            let name = self.string(name);
            self.push(&[name, KIND_INT << 24, size, size * 8])
        }

        pub fn pointer(&mut self, to: u32) -> u32 {
            self.push(&[0, KIND_PTR << 24, to])
        }

        /// `members`: (name, type, byte offset).
        pub fn strukt(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            let name = self.string(name);
            let mut words = vec![name, KIND_STRUCT << 24 | members.len() as u32, size];
            for &(member, ty, offset) in members {
                words.extend([self.string(member), ty, offset * 8]);
            }
            self.push(&words)
        }

        pub fn array(&mut self, elem: u32, len: u32) -> u32 {
            self.push(&[0, KIND_ARRAY << 24, 0, elem, elem, len])
        }

        /// `typedef void (*btf_trace_<name>)(void *, params…)`.
        pub fn tracepoint(&mut self, name: &str, params: &[u32]) -> u32 {
            let void = self.pointer(0);
            let mut words = vec![
                0,
                KIND_FUNC_PROTO << 24 | (params.len() as u32 + 1),
                0,
                0,
                void,
            ];
            for &p in params {
                words.extend([0, p]);
            }
            let proto = self.push(&words);
            let pointer = self.pointer(proto);
            let name = self.string(&format!("btf_trace_{name}"));
            self.push(&[name, KIND_TYPEDEF << 24, pointer])
        }

        pub fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            let len = self.types.len() as u32;
            for w in [24u32, 0, len, len, self.strings.len() as u32] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with: 1 int, 2 struct counter {int lock; long count;},
    /// 3 counter[4], 4 anonymous struct {counter rss[4]} (as mm_struct wraps
    /// its randomized fields), 5 struct mm {anon; }, 6 pointer to mm,
    /// 7 void pointer, 8 prototype (void *, struct mm *, int), 9 pointer to
    /// it, 10 typedef btf_trace_rss_stat.
    pub(crate) fn blob() -> Vec<u8> {
        let strings = b"\0int\0lock\0count\0counter\0rss\0mm\0btf_trace_rss_stat\0";
        let s = |name: &str| {
            strings
                .windows(name.len() + 1)
                .position(|w| &w[..name.len()] == name.as_bytes() && w[name.len()] == 0)
                .unwrap() as u32
        };
        let mut t = Vec::new();
        let mut push = |words: &[u32]| {
            words
                .iter()
                .for_each(|w| t.extend_from_slice(&w.to_le_bytes()))
        };
        let info = |kind: u32, vlen: u32| kind << 24 | vlen;
        push(&[s("int"), info(KIND_INT, 0), 8, 64]); // 1
        push(&[
            s("counter"),
            info(KIND_STRUCT, 2),
            16,
            s("lock"),
            1,
            0,
            s("count"),
            1,
            64,
        ]); // 2
        push(&[0, info(KIND_ARRAY, 0), 0, 2, 1, 4]); // 3
        push(&[0, info(KIND_STRUCT, 1), 64, s("rss"), 3, 128]); // 4: rss at byte 16
        push(&[s("mm"), info(KIND_STRUCT, 1), 128, 0, 4, 64]); // 5: anon at byte 8
        push(&[0, info(KIND_PTR, 0), 5]); // 6
        push(&[0, info(KIND_PTR, 0), 0]); // 7
        push(&[0, info(KIND_FUNC_PROTO, 3), 0, 0, 7, 0, 6, 0, 1]); // 8
        push(&[0, info(KIND_PTR, 0), 8]); // 9
        push(&[s("btf_trace_rss_stat"), info(KIND_TYPEDEF, 0), 9]); // 10
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&t);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn finds_fields_through_anonymous_members() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.type_count(), 10);
        assert_eq!(btf.offset("mm", "rss").unwrap(), 24);
        assert_eq!(btf.offset("counter", "count").unwrap(), 8);
        assert_eq!(
            btf.array_field("mm", "rss").unwrap(),
            (Param::Composite("counter".into()), 16, 4)
        );
        assert_eq!(
            btf.field_param("counter", "count").unwrap(),
            Param::Int {
                name: "int".into(),
                size: 8
            }
        );
        assert!(matches!(
            btf.offset("mm", "nope"),
            Err(BtfError::NoField { .. })
        ));
        assert!(matches!(
            btf.offset("nope", "rss"),
            Err(BtfError::NoStruct { .. })
        ));
        assert!(matches!(
            btf.array_field("counter", "count"),
            Err(BtfError::FieldType { .. })
        ));
    }

    #[test]
    fn reads_a_tracepoints_arguments_from_its_typedef() {
        let btf = Btf::parse(&blob()).unwrap();
        let args = btf.tracepoint_args("rss_stat").unwrap();
        assert_eq!(
            args,
            [
                Param::Pointer("mm".into()),
                Param::Int {
                    name: "int".into(),
                    size: 8
                }
            ]
        );
        assert_eq!(args[0].to_string(), "struct mm *");
        assert!(matches!(
            btf.tracepoint_args("mark_victim"),
            Err(BtfError::NoTracepoint { .. })
        ));
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(Btf::parse(b"not btf at all, not at all").is_err());
        let mut truncated = blob();
        truncated.truncate(40);
        assert!(Btf::parse(&truncated).is_err());
    }
}
