//! Kernel struct layouts, read from the kernel's own BTF at load time.
//!
//! The `rss_stat` program is a raw tracepoint: the kernel hands it
//! `(struct mm_struct *mm, int member)` and builds no record, which is what
//! makes it cheap. It reads the counter itself, from
//! `mm->rss_stat[member].count`, and compares `mm` with `current->mm`. Rust
//! BPF has no CO-RE, so the offsets of those fields come from
//! `/sys/kernel/btf/vmlinux` here and are written into the program's globals.
//!
//! aya parses BTF, but keeps member lookup private; this reader does the one
//! thing needed, resolving a dotted field path to a byte offset, following
//! anonymous structs and unions, typedefs and qualifiers.

use std::{fs, io, path::Path};

use xypriss_ebpf::trace_point::KernelLayout;

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
    #[error("BTF: `{path}` is not a struct or union field path")]
    NotAStruct { path: String },
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
    /// TYPEDEF, CONST, VOLATILE, RESTRICT, TYPE_TAG: resolve to the next type.
    Alias {
        next: u32,
    },
    Array {
        elem: u32,
        len: u32,
    },
    Other,
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
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    (Type::Alias { next: size_or_type }, 0)
                }
                KIND_INT | KIND_VAR | KIND_DECL_TAG => (Type::Other, 4),
                KIND_ENUM | KIND_FUNC_PROTO => (Type::Other, vlen * 8),
                KIND_DATASEC | KIND_ENUM64 => (Type::Other, vlen * 12),
                KIND_PTR | 7 | 12 | 16 => (Type::Other, 0),
                _ => return Err("unknown BTF kind"),
            };
            at += extra;
            types.push(ty);
        }
        Ok(Self { types, strings })
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
                Some(Type::Alias { next }) => id = *next,
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

    /// The element type's size of array field `strukt.field`, and its length.
    fn array_field(&self, strukt: &str, field: &str) -> Result<(u32, u32), BtfError> {
        let id = self.struct_id(strukt)?;
        let (_, ty) = self.field(id, field).ok_or_else(|| BtfError::NoField {
            strukt: strukt.into(),
            field: field.into(),
        })?;
        match self.types.get(self.resolve(ty) as usize) {
            Some(Type::Array { elem, len }) => match self.types.get(self.resolve(*elem) as usize) {
                Some(Type::Composite { size, .. }) => Ok((*size, *len)),
                _ => Err(BtfError::NotAStruct {
                    path: format!("{strukt}.{field}[]"),
                }),
            },
            _ => Err(BtfError::NotAStruct {
                path: format!("{strukt}.{field}"),
            }),
        }
    }

    /// What the `rss_stat` program reads: `current->mm` and
    /// `mm->rss_stat[member].count`.
    pub fn kernel_layout(&self, page_size: u64) -> Result<KernelLayout, BtfError> {
        let (counter_size, counters) = self.array_field("mm_struct", "rss_stat")?;
        if counters < xypriss_ebpf::rss_stat::NR_MM_COUNTERS as u32 {
            return Err(BtfError::NoField {
                strukt: "mm_struct".into(),
                field: format!("rss_stat[{}]", xypriss_ebpf::rss_stat::NR_MM_COUNTERS),
            });
        }
        Ok(KernelLayout {
            task_mm: self.offset("task_struct", "mm")?,
            mm_rss_stat: self.offset("mm_struct", "rss_stat")?,
            counter_size,
            counter_count: self.offset("percpu_counter", "count")?,
            page_shift: page_size.trailing_zeros(),
            _pad: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with: 1 int, 2 struct counter {int lock; long count;},
    /// 3 counter[4], 4 anonymous struct {counter rss[4]} (as mm_struct wraps
    /// its randomized fields), 5 struct mm {anon; }, 6 typedef.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0lock\0count\0counter\0rss\0mm\0";
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
        assert_eq!(btf.offset("mm", "rss").unwrap(), 24);
        assert_eq!(btf.offset("counter", "count").unwrap(), 8);
        assert_eq!(btf.array_field("mm", "rss").unwrap(), (16, 4));
        assert!(matches!(
            btf.offset("mm", "nope"),
            Err(BtfError::NoField { .. })
        ));
        assert!(matches!(
            btf.offset("nope", "rss"),
            Err(BtfError::NoStruct { .. })
        ));
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(Btf::parse(b"not btf at all, not at all").is_err());
        let mut truncated = blob();
        truncated.truncate(40);
        assert!(Btf::parse(&truncated).is_err());
    }

    #[test]
    fn reads_this_kernels_layout() {
        if !Path::new(VMLINUX).exists() && std::env::var_os("CI").is_none() {
            return; // No BTF here: the loader says so at run time, and falls back.
        }
        let btf = Btf::from_file(Path::new(VMLINUX)).unwrap();
        let layout = btf.kernel_layout(4096).unwrap();
        assert_eq!(layout.page_shift, 12);
        assert!(layout.counter_size >= 16, "{layout:?}");
        assert!(layout.task_mm > 0 && layout.mm_rss_stat > 0, "{layout:?}");
    }
}
