//! The bearer token that guards the HTTP API's mutating endpoints.
//!
//! A fresh token is drawn at each start from the kernel's random source, and
//! written where only whoever may run xypriss can read it: a file of mode
//! 0600 in the runtime directory, created under a temporary name with
//! `O_EXCL` and renamed into place, so that no one ever reads a partial token
//! or a file with a wider mode. It is never printed: the event stream says
//! where the file is, not what it holds. Presented tokens are compared in
//! constant time, so that answer times say nothing about how much of a guess
//! was right.

use std::{
    fmt,
    fs::{self, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use subtle::ConstantTimeEq as _;

/// Random bytes in a token (64 hex digits).
const BYTES: usize = 32;

/// Why there is no token file.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot draw random bytes for the API token: {0}")]
    Random(getrandom::Error),
    #[error("cannot write the API token to {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// A secret; its `Debug` does not show it.
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A new token: 32 random bytes, as lowercase hex.
    pub fn generate() -> Result<Self, TokenError> {
        let mut bytes = [0u8; BYTES];
        getrandom::fill(&mut bytes).map_err(TokenError::Random)?;
        Ok(Self(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// Whether `presented` is this token, in time that depends only on
    /// the lengths.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }

    /// The secret itself, for tests that present it.
    #[cfg(test)]
    pub(crate) fn secret(&self) -> &str {
        &self.0
    }

    /// Writes the token, and a newline, to `path` with mode 0600; the file
    /// is removed when the returned guard is dropped.
    pub fn write(&self, path: &Path) -> Result<TokenFile, TokenError> {
        let error = |source| TokenError::Write {
            path: path.to_owned(),
            source,
        };
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(format!(".{}.tmp", std::process::id()));
        let temporary = PathBuf::from(temporary);
        // Left by an xypriss that was killed with the same pid, if anything.
        let _ = fs::remove_file(&temporary);
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .and_then(|mut file| writeln!(file, "{}", self.0))
            .and_then(|()| fs::rename(&temporary, path));
        if let Err(err) = written {
            let _ = fs::remove_file(&temporary);
            return Err(error(err));
        }
        Ok(TokenFile {
            path: path.to_owned(),
        })
    }
}

/// A written token file, removed when dropped.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
}

impl TokenFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_file(&self.path)
            && err.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {err}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_token_is_64_hex_digits_and_new_each_time() {
        let (a, b) = (Token::generate().unwrap(), Token::generate().unwrap());
        assert_eq!(a.0.len(), 64);
        assert!(a.0.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.0, b.0);
    }

    #[test]
    fn only_the_token_itself_matches() {
        let token = Token::generate().unwrap();
        assert!(token.matches(&token.0.clone()));
        assert!(!token.matches(""));
        assert!(!token.matches(&token.0[..63]));
        assert!(!token.matches(&format!("{}0", token.0)));
        assert!(!token.matches(&token.0.to_uppercase()));
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let token = Token::generate().unwrap();
        assert!(!format!("{token:?}").contains(&token.0));
    }

    #[test]
    fn the_file_is_0600_holds_the_token_and_goes_when_dropped() {
        let dir = std::env::temp_dir().join(format!("xypriss-token-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pool.token");
        fs::write(&path, "stale").unwrap();
        let token = Token::generate().unwrap();
        let file = token.write(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{}\n", token.0));
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file is left"
        );
        drop(file);
        assert!(!path.exists());
        fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_place_is_an_error_naming_it() {
        let token = Token::generate().unwrap();
        let err = token
            .write(Path::new("/nonexistent-dir/pool.token"))
            .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent-dir/pool.token"),
            "{err}"
        );
    }
}
