//! Where backups go: a directory on the node (`file:///dir`) or an S3-compatible bucket
//! (`s3://bucket/prefix`), both through `object_store`. S3 credentials, region and endpoint
//! come from the standard `AWS_*` environment variables, or from the `KEY=VALUE` lines of
//! `backup.credentials_file`; they are never logged nor shown in an answer.

use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use std::sync::Arc;

/// A parsed destination (or restore source).
#[derive(Clone)]
pub struct Location {
    /// The URI as the user gave it (it holds no secret: credentials never go in it).
    pub uri: String,
    pub store: Arc<dyn ObjectStore>,
    /// Where under the store backups live (each in a folder named by its id).
    pub prefix: ObjectPath,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Location").field("uri", &self.uri).finish()
    }
}

fn bad(message: String) -> Error {
    Error::invalid(ErrorCode::InvalidLocation, message)
}

impl Location {
    /// Parses `file:///absolute/dir` or `s3://bucket[/prefix]`. A directory must exist and
    /// must not be inside the node's data directory.
    pub fn parse(uri: &str, config: &Config) -> Result<Location> {
        if uri.len() > 1024 {
            return Err(bad("the location is longer than 1024 bytes".into()));
        }
        if let Some(path) = uri.strip_prefix("file://") {
            return Location::directory(uri, path, config);
        }
        if let Some(rest) = uri.strip_prefix("s3://") {
            return Location::bucket(uri, rest, config);
        }
        Err(bad(format!(
            "unsupported location {uri:?}: use file:///absolute/dir or s3://bucket/prefix"
        )))
    }

    fn directory(uri: &str, path: &str, config: &Config) -> Result<Location> {
        let dir = std::path::Path::new(path);
        if !dir.is_absolute() || path.split('/').any(|part| part == "..") {
            return Err(bad(format!(
                "{uri:?}: a file location needs an absolute path without '..' (file:///backups)"
            )));
        }
        let dir = dir.canonicalize().map_err(|e| {
            bad(format!(
                "{uri:?}: {path} cannot be used ({e}); create the directory first"
            ))
        })?;
        if !dir.is_dir() {
            return Err(bad(format!("{uri:?}: {path} is not a directory")));
        }
        if let Ok(data) = config.node.data_dir.canonicalize()
            && (dir.starts_with(&data) || data.starts_with(&dir))
        {
            return Err(bad(format!(
                "{uri:?}: backups cannot go inside the node's data directory ({}) nor contain it",
                data.display()
            )));
        }
        let store =
            LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(format!("{uri:?}: {e}")))?;
        Ok(Location {
            uri: uri.to_string(),
            store: Arc::new(store),
            prefix: ObjectPath::default(),
        })
    }

    fn bucket(uri: &str, rest: &str, config: &Config) -> Result<Location> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(bad(format!(
                "{uri:?}: {bucket:?} is not a valid bucket name"
            )));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|part| part == ".." || part == ".") {
            return Err(bad(format!(
                "{uri:?}: the prefix must not contain '.' or '..'"
            )));
        }
        let prefix = ObjectPath::parse(prefix).map_err(|e| bad(format!("{uri:?}: {e}")))?;
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (key, value) in credentials_file(config)? {
            match key.to_ascii_lowercase().parse() {
                Ok(key) => builder = builder.with_config(key, value),
                Err(_) => {
                    return Err(Error::invalid(
                        ErrorCode::InvalidLocation,
                        format!(
                            "backup.credentials_file has a line whose name is not an S3 setting ({} characters before '='; use AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT, ...)",
                            key.len()
                        ),
                    ));
                }
            }
        }
        let store = builder.build().map_err(|e| {
            Error::invalid(
                ErrorCode::InvalidLocation,
                format!(
                    "{uri:?}: the S3 client cannot be set up: {}",
                    redact(&e.to_string())
                ),
            )
        })?;
        Ok(Location {
            uri: uri.to_string(),
            store: Arc::new(store),
            prefix,
        })
    }

    /// Where a file of a backup lives.
    pub fn path(&self, backup: &str, file: &str) -> ObjectPath {
        let mut path = self.prefix.clone();
        for part in std::iter::once(backup).chain(file.split('/')) {
            path = path.clone().join(part);
        }
        path
    }

    /// The backup's folder, as users see it.
    pub fn display(&self, backup: &str) -> String {
        format!("{}/{backup}", self.uri.trim_end_matches('/'))
    }
}

/// The settings of `backup.credentials_file`: a file of `KEY=VALUE` lines (blank lines and
/// `#` comments skipped), or a directory holding one file per key, named by it (a mounted
/// Kubernetes Secret: names starting with `.`, the kubelet's own, are skipped).
fn credentials_file(config: &Config) -> Result<Vec<(String, String)>> {
    let Some(path) = &config.backup.credentials_file else {
        return Ok(Vec::new());
    };
    let unreadable = |e: std::io::Error| {
        Error::unavailable(
            ErrorCode::Unavailable,
            format!(
                "backup.credentials_file {} cannot be read: {e}",
                path.display()
            ),
        )
    };
    if path.is_dir() {
        let mut settings = Vec::new();
        for entry in std::fs::read_dir(path).map_err(unreadable)? {
            let entry = entry.map_err(unreadable)?;
            let key = entry.file_name().to_string_lossy().to_string();
            if key.starts_with('.') || !entry.path().is_file() {
                continue;
            }
            let value = std::fs::read_to_string(entry.path()).map_err(unreadable)?;
            settings.push((key, value.trim().to_string()));
        }
        settings.sort();
        return Ok(settings);
    }
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            let value = value.trim().trim_matches('"');
            Some((key.trim().to_string(), value.to_string()))
        })
        .collect())
}

/// An error from the store, for a message. object_store's errors can carry the store's
/// response body, and an S3 signature error's body holds the access key id and what was signed:
/// only the part before any XML or JSON body is kept, at most 300 characters, and signed URLs'
/// query parameters are masked.
pub fn redact(message: &str) -> String {
    let cut = message
        .find(['<', '{'])
        .map_or(message, |at| &message[..at]);
    let words: Vec<&str> = cut
        .split_whitespace()
        .map(|word| {
            if word.contains("X-Amz-")
                || word.contains("Signature")
                || word.contains("AWSAccessKeyId")
            {
                "<redacted>"
            } else {
                word
            }
        })
        .collect();
    let mut text = words.join(" ");
    if text.len() > 300 {
        let mut end = 300;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// A store error as a Grape error.
pub fn store_error(what: &str, error: object_store::Error) -> Error {
    let message = format!("{what}: {}", redact(&error.to_string()));
    match error {
        object_store::Error::NotFound { .. } => Error::not_found(ErrorCode::NotFound, message),
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => Error::invalid(
            ErrorCode::InvalidLocation,
            format!(
                "{what}: the store refused access (check the credentials and the bucket policy)"
            ),
        ),
        _ => Error::unavailable(ErrorCode::Unavailable, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &std::path::Path) -> Vec<(String, String)> {
        let mut config = Config::default();
        config.backup.credentials_file = Some(path.to_path_buf());
        credentials_file(&config).unwrap()
    }

    #[test]
    fn credentials_come_from_key_value_lines_or_a_mounted_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s3.env");
        std::fs::write(
            &file,
            "# keys\n\nAWS_ACCESS_KEY_ID=id\nAWS_SECRET_ACCESS_KEY = \"secret=x\"\n",
        )
        .unwrap();
        let expected = vec![
            ("AWS_ACCESS_KEY_ID".to_string(), "id".to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), "secret=x".to_string()),
        ];
        assert_eq!(read(&file), expected);

        // As the kubelet mounts a Secret: each key a link into a hidden, dated folder.
        let mounted = dir.path().join("secret");
        let data = mounted.join("..2026_12_03_18_00_00.1");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("AWS_ACCESS_KEY_ID"), "id\n").unwrap();
        std::fs::write(data.join("AWS_SECRET_ACCESS_KEY"), "secret=x").unwrap();
        std::os::unix::fs::symlink("..2026_12_03_18_00_00.1", mounted.join("..data")).unwrap();
        for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            std::os::unix::fs::symlink(format!("..data/{key}"), mounted.join(key)).unwrap();
        }
        assert_eq!(read(&mounted), expected);
    }
}
