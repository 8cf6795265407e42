//! The `--config` file: XyPriss's `createServer` options, or their
//! `cluster.config`, as JSON, read into option values.
//!
//! Why a file in XyPriss's shape: xypriss's users configured memory in
//! XyPriss's `createServer({ cluster: { config } })` first. They can hand
//! xypriss those options as they are, and every name means what it meant
//! there. The other sections of a createServer object (`server`, `security`,
//! …) are XyPriss's own: they are accepted and ignored, and the caller says
//! so once ([`Parsed::ignored`]).
//!
//! Why so strict inside `cluster`: a misspelt key that is silently ignored
//! leaves a memory limit off while the user believes it is on. So an unknown
//! key and a wrong type are each an error at their JSON path, line and
//! column, and a misspelt key gets a "did you mean". The keys allowed are
//! the paths of [`defs::ALL`]: there is no second list of them.
//!
//! The file is refused above [`MAX_FILE_BYTES`] before it is read, must be
//! UTF-8, and serde_json's recursion limit (128 levels) bounds nesting.

use std::{fmt, fs::File, io::Read as _, path::Path, sync::LazyLock};

use serde::{
    Deserialize as _, Deserializer,
    de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor},
};
use serde_json::Value as Json;
use serde_path_to_error::Segment;

use super::{
    defs::{self, Opt, Value},
    error::{ConfigError, Origin, Setting},
};

/// The largest configuration file read: a real one is a few KiB. A larger file
/// is refused from its size before anything is read.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// The path before the options in a whole createServer object.
pub const OUTER_PREFIX: &str = "cluster.config.";

/// The top-level sections of XyPriss's `createServer` options other than
/// `cluster`: XyPriss's own business, accepted and ignored.
pub const XYPRISS_SECTIONS: &[&str] = &[
    "env",
    "server",
    "cache",
    "performance",
    "monitoring",
    "security",
    "requestManagement",
    "fileUpload",
    "logging",
    "plugins",
    "pluginPermissions",
    "multiServer",
    "workerPool",
    "notFound",
    "responseControl",
    "responseManipulation",
    "isAuxiliary",
    "network",
];

/// The keys of `cluster`.
const CLUSTER_KEYS: &[&str] = &["enabled", "config"];

/// The values a file gives.
#[derive(Debug)]
pub struct Parsed {
    pub entries: Vec<(&'static Opt, Value)>,
    /// `cluster.config.` for the whole createServer object, else empty.
    pub prefix: &'static str,
    /// The createServer sections the file has besides `cluster`, ignored.
    pub ignored: Vec<&'static str>,
}

/// Reads at most [`MAX_FILE_BYTES`]: a larger file is refused from its size,
/// and a stream (a pipe, /dev/stdin) that goes past it is cut off and refused.
pub fn read_capped(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let read_error = |source| ConfigError::Read {
        file: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if meta.is_file() && meta.len() > MAX_FILE_BYTES {
        return Err(ConfigError::TooLarge {
            file: path.to_path_buf(),
            len: Some(meta.len()),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigError::TooLarge {
            file: path.to_path_buf(),
            len: None,
        });
    }
    Ok(bytes)
}

/// Parses a configuration file's bytes.
pub fn parse(file: &Path, bytes: &[u8]) -> Result<Parsed, ConfigError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let (line, column) = line_column(&bytes[..e.valid_up_to()]);
        ConfigError::NotUtf8 {
            file: file.to_path_buf(),
            line,
            column,
        }
    })?;
    // Editors on Windows may start a UTF-8 file with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(ConfigError::Syntax {
            file: file.to_path_buf(),
            line: 1,
            column: 1,
            reason: "the file is empty; expected a JSON object".into(),
        });
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let root = serde_path_to_error::deserialize(&mut deserializer)
        .map(|Root(root)| root)
        .map_err(|e| file_error(file, &e))?;
    deserializer
        .end()
        .map_err(|e| syntax_error(file, &e, "after the JSON object"))?;
    let Some(cluster) = root.cluster else {
        return Ok(Parsed {
            entries: root.flat,
            prefix: "",
            ignored: root.ignored,
        });
    };
    if let Some(key) = root.flat_keys.first() {
        return Err(ConfigError::MixedShapes {
            file: file.to_path_buf(),
            path: (*key).into(),
        });
    }
    if cluster.enabled == Some(false) {
        return Err(ConfigError::Value {
            setting: Setting {
                path: "cluster.enabled".into(),
                value: "false".into(),
                origin: Origin::File(file.to_path_buf()),
            },
            reason: "xypriss always runs a pool of workers; remove the key or set it to true"
                .into(),
        });
    }
    Ok(Parsed {
        entries: cluster.config,
        prefix: OUTER_PREFIX,
        ignored: root.ignored,
    })
}

/// An object inside `cluster.config`, by its path there, and its keys.
#[derive(Debug)]
pub struct Section {
    /// Dotted; empty for `cluster.config` itself.
    pub path: &'static str,
    pub keys: Vec<&'static str>,
}

/// The objects of `cluster.config`: every proper prefix of an option's path,
/// with the keys found under it, in [`defs::ALL`]'s order.
pub fn sections() -> &'static [Section] {
    static SECTIONS: LazyLock<Vec<Section>> = LazyLock::new(|| {
        let mut sections: Vec<Section> = Vec::new();
        for opt in defs::ALL {
            let mut start = 0;
            loop {
                let end = opt.path[start..].find('.').map(|i| start + i);
                let parent = &opt.path[..start.saturating_sub(1)];
                let key = &opt.path[start..end.unwrap_or(opt.path.len())];
                let index = match sections.iter().position(|s| s.path == parent) {
                    Some(index) => index,
                    None => {
                        sections.push(Section {
                            path: parent,
                            keys: Vec::new(),
                        });
                        sections.len() - 1
                    }
                };
                if !sections[index].keys.contains(&key) {
                    sections[index].keys.push(key);
                }
                match end {
                    Some(end) => start = end + 1,
                    None => break,
                }
            }
        }
        sections
    });
    &SECTIONS
}

fn section(path: &str) -> Option<&'static Section> {
    sections().iter().find(|s| s.path == path)
}

/// The keys allowed at the top of the file: `cluster`, the keys of
/// `cluster.config`, and XyPriss's other sections.
fn root_keys() -> &'static [&'static str] {
    static KEYS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
        let config = section("").map_or(&[][..], |s| &s.keys[..]);
        std::iter::once("cluster")
            .chain(config.iter().copied())
            .chain(XYPRISS_SECTIONS.iter().copied())
            .collect()
    });
    &KEYS
}

/// The keys allowed in the object at `parent` (a path in the file), or `None`
/// when `parent` is not an object of ours.
fn keys_under(parent: &[&str]) -> Option<&'static [&'static str]> {
    match parent {
        [] => Some(root_keys()),
        ["cluster"] => Some(CLUSTER_KEYS),
        ["cluster", "config", rest @ ..] => section(&rest.join(".")).map(|s| &s.keys[..]),
        _ => section(&parent.join(".")).map(|s| &s.keys[..]),
    }
}

// The file, as serde reads it: a visitor per kind of object, driven by the
// sections; every key optional, no other key allowed.

/// The whole file.
struct Root(RootRead);

#[derive(Default)]
struct RootRead {
    cluster: Option<ClusterRead>,
    /// The values of a file that holds `cluster.config` only.
    flat: Vec<(&'static Opt, Value)>,
    /// The keys of `cluster.config` found at the top.
    flat_keys: Vec<&'static str>,
    ignored: Vec<&'static str>,
}

#[derive(Default)]
struct ClusterRead {
    enabled: Option<bool>,
    config: Vec<(&'static Opt, Value)>,
}

/// Refuses a key seen twice in one object, as serde's derived structs do.
fn once<E: de::Error>(seen: &mut Vec<&'static str>, key: &'static str) -> Result<(), E> {
    if seen.contains(&key) {
        return Err(E::duplicate_field(key));
    }
    seen.push(key);
    Ok(())
}

impl<'de> serde::Deserialize<'de> for Root {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RootVisitor;
        impl<'de> Visitor<'de> for RootVisitor {
            type Value = RootRead;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RootRead, A::Error> {
                let mut read = RootRead::default();
                let mut seen = Vec::new();
                while let Some(key) = map.next_key_seed(Key(root_keys()))? {
                    once(&mut seen, key)?;
                    if key == "cluster" {
                        read.cluster = map.next_value_seed(ClusterSeed)?;
                    } else if XYPRISS_SECTIONS.contains(&key) {
                        map.next_value::<IgnoredAny>()?;
                        read.ignored.push(key);
                    } else {
                        read.flat_keys.push(key);
                        read_value(&mut map, "", key, &mut read.flat)?;
                    }
                }
                Ok(read)
            }
        }
        deserializer.deserialize_map(RootVisitor).map(Root)
    }
}

/// `cluster`: `null` or an object.
struct ClusterSeed;

impl<'de> DeserializeSeed<'de> for ClusterSeed {
    type Value = Option<ClusterRead>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for ClusterSeed {
    type Value = Option<ClusterRead>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut read = ClusterRead::default();
        let mut seen = Vec::new();
        while let Some(key) = map.next_key_seed(Key(CLUSTER_KEYS))? {
            once(&mut seen, key)?;
            if key == "enabled" {
                read.enabled = map.next_value()?;
            } else {
                map.next_value_seed(SectionSeed {
                    path: "",
                    out: &mut read.config,
                })?;
            }
        }
        Ok(Some(read))
    }
}

/// The object at `path` inside `cluster.config` (`null`: nothing set).
struct SectionSeed<'a> {
    path: &'static str,
    out: &'a mut Vec<(&'static Opt, Value)>,
}

impl<'de> DeserializeSeed<'de> for SectionSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for SectionSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let keys = section(self.path).map_or(&[][..], |s| &s.keys[..]);
        let mut seen = Vec::new();
        while let Some(key) = map.next_key_seed(Key(keys))? {
            once(&mut seen, key)?;
            read_value(&mut map, self.path, key, self.out)?;
        }
        Ok(())
    }
}

/// The value of `key` in the section at `section_path`: a section of its
/// own, or an option's value.
fn read_value<'de, A: MapAccess<'de>>(
    map: &mut A,
    section_path: &str,
    key: &str,
    out: &mut Vec<(&'static Opt, Value)>,
) -> Result<(), A::Error> {
    let path = if section_path.is_empty() {
        key.to_string()
    } else {
        format!("{section_path}.{key}")
    };
    if let Some(inner) = section(&path) {
        return map.next_value_seed(SectionSeed {
            path: inner.path,
            out,
        });
    }
    let opt = defs::at(&path)
        .ok_or_else(|| de::Error::custom(format_args!("{path} is no option of xypriss")))?;
    if let Some(value) = map.next_value_seed(Leaf(opt))? {
        out.push((opt, value));
    }
    Ok(())
}

/// A key, one of those allowed.
struct Key(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Key {
    type Value = &'static str;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = &'static str;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        self.0
            .iter()
            .find(|allowed| **allowed == key)
            .copied()
            .ok_or_else(|| E::unknown_field(key, self.0))
    }
}

/// An option's value (`null`: not set), read as a JSON value so that a
/// wrong type gets a message in the option's own terms.
struct Leaf(&'static Opt);

impl<'de> DeserializeSeed<'de> for Leaf {
    type Value = Option<Value>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        if let defs::Slot::Bool(_) = self.0.slot {
            // serde's own message, at the value's place.
            return Ok(Option::<bool>::deserialize(deserializer)?.map(Value::Bool));
        }
        match Option::<Json>::deserialize(deserializer)? {
            None => Ok(None),
            Some(json) => self
                .0
                .slot
                .from_json(&json)
                .map(Some)
                .map_err(de::Error::custom),
        }
    }
}

/// 1-based line and column of the end of `prefix`.
fn line_column(prefix: &[u8]) -> (usize, usize) {
    let line_start = prefix
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = 1 + prefix.iter().filter(|&&b| b == b'\n').count();
    let column = 1 + String::from_utf8_lossy(&prefix[line_start..])
        .chars()
        .count();
    (line, column)
}

/// An error from serde_json, with the path serde_path_to_error tracked.
fn file_error(file: &Path, error: &serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    let inner = error.inner();
    if !inner.is_data() {
        return syntax_error(file, inner, "");
    }
    let segments: Vec<&str> = error
        .path()
        .iter()
        .map(|segment| match segment {
            Segment::Map { key } => key.as_str(),
            Segment::Enum { variant } => variant.as_str(),
            Segment::Seq { .. } | Segment::Unknown => "?",
        })
        .collect();
    let path = if segments.is_empty() {
        "the top level".to_string()
    } else {
        segments.join(".")
    };
    if let Some((key, parent)) = segments.split_last()
        && let Some(allowed) = keys_under(parent)
        && !allowed.contains(key)
    {
        return ConfigError::UnknownKey {
            file: file.to_path_buf(),
            path,
            line: inner.line(),
            column: inner.column().max(1),
            hint: unknown_key_hint(key, parent, allowed),
        };
    }
    ConfigError::Invalid {
        file: file.to_path_buf(),
        path,
        line: inner.line(),
        column: inner.column().max(1),
        reason: shorten(message_without_position(inner)),
    }
}

/// Caps a message that quotes the user's value: a value can be a megabyte.
fn shorten(message: String) -> String {
    const MAX_CHARS: usize = 200;
    if message.chars().count() <= MAX_CHARS {
        return message;
    }
    let mut short: String = message.chars().take(MAX_CHARS).collect();
    short.push('…');
    short
}

fn syntax_error(file: &Path, error: &serde_json::Error, context: &str) -> ConfigError {
    let reason = if error.is_eof() {
        "the file ends in the middle of the JSON: is it truncated?".to_string()
    } else {
        let message = message_without_position(error);
        if message == "recursion limit exceeded" {
            "nested more than 128 levels deep: not a configuration file".to_string()
        } else if context.is_empty() {
            shorten(format!("not valid JSON: {message}"))
        } else {
            shorten(format!("not valid JSON {context}: {message}"))
        }
    };
    ConfigError::Syntax {
        file: file.to_path_buf(),
        line: error.line(),
        column: error.column().max(1),
        reason,
    }
}

/// serde_json's message, whose position the error already gives as
/// `file:line:column`.
fn message_without_position(error: &serde_json::Error) -> String {
    let message = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    message
        .strip_suffix(&position)
        .map_or_else(|| message.clone(), str::to_string)
}

/// "did you mean" for a misspelt key (by Jaro-Winkler similarity, as clap
/// does for flags), else where the key belongs if it is a key elsewhere, else
/// the keys of ours allowed here (XyPriss's other sections are not listed).
fn unknown_key_hint(key: &str, parent: &[&str], allowed: &[&str]) -> String {
    let normalize = |s: &str| s.to_ascii_lowercase().replace(['_', '-'], "");
    let wanted = normalize(key);
    let best = allowed
        .iter()
        .map(|candidate| {
            (
                strsim::jaro_winkler(&wanted, &normalize(candidate)),
                candidate,
            )
        })
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, candidate)) = best {
        return format!("did you mean `{candidate}`?");
    }
    let prefix = if parent.first() == Some(&"cluster") {
        OUTER_PREFIX
    } else {
        ""
    };
    let home = sections()
        .iter()
        .find(|s| s.keys.contains(&key))
        .map(|s| format!("{prefix}{}", s.path));
    match home {
        Some(home) => {
            let home = home.trim_end_matches('.');
            let home = if home.is_empty() {
                "the top level"
            } else {
                home
            };
            format!("`{key}` belongs in {home}")
        }
        None => {
            let ours: Vec<&str> = allowed
                .iter()
                .copied()
                .filter(|k| !XYPRISS_SECTIONS.contains(k))
                .collect();
            format!("the keys here are `{}`", ours.join("`, `"))
        }
    }
}
