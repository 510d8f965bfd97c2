//! Recording delivery from appliance to server (decision 0016): the URL of
//! each file of a take, which file names a job's take may have, and the
//! headers and bodies of the resumable upload.
//!
//! ```text
//! HEAD  /api/v1/node/recordings/{job}/files/{name}           → Upload-Offset[, Upload-Length]
//! PATCH /api/v1/node/recordings/{job}/files/{name}           Upload-Offset, Upload-Length,
//!                                                             Upload-Checksum: sha256 <base64>
//!                                                             → 204 Upload-Offset
//! POST  /api/v1/node/recordings/{job}/files/{name}/complete  {"sha256": hex} → 200 Confirmation
//! ```
//!
//! Invariant: a name [`check_file_name`] accepts is a plain file name (no
//! directory part, no dots but the ones the recorder puts there), so it can
//! be joined to a directory and used as an object key as it is.

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::JobId;

/// The durable offset, in requests (the client's) and answers (the server's).
pub const UPLOAD_OFFSET: &str = "upload-offset";
/// The whole file's size in bytes.
pub const UPLOAD_LENGTH: &str = "upload-length";
/// `sha256 <base64 of the body's SHA-256>` (tus's checksum extension).
pub const UPLOAD_CHECKSUM: &str = "upload-checksum";
/// The media type of a `PATCH` body (tus's).
pub const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// tus's status for a body whose checksum does not match.
pub const CHECKSUM_MISMATCH: u16 = 460;

/// The most bytes one `PATCH` may carry.
pub const MAX_CHUNK_BYTES: usize = 16 << 20;
/// What an appliance sends per `PATCH` unless configured otherwise.
pub const DEFAULT_CHUNK_BYTES: usize = 8 << 20;

/// The path of one file of `job`'s take on the server.
pub fn file_path(job: JobId, name: &str) -> String {
    format!("/api/v1/node/recordings/{job}/files/{name}")
}

/// The path that completes the upload of that file.
pub fn complete_path(job: JobId, name: &str) -> String {
    format!("{}/complete", file_path(job, name))
}

/// Why a file name is not one of `job`'s take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{name:?} is not a file of job {job}'s take ({{job}}.flac, {{job}}.wav or {{job}}.NNNN.flac|wav)"
)]
pub struct FileNameError {
    pub job: JobId,
    pub name: String,
}

/// Whether `name` is a file the recorder gives a take of `job`: `{job}.flac`,
/// `{job}.wav`, or a segment `{job}.NNNN.flac|wav` (4 to 6 digits).
pub fn check_file_name(job: JobId, name: &str) -> Result<(), FileNameError> {
    let refuse = || FileNameError {
        job,
        name: name.chars().take(200).collect(),
    };
    let rest = name
        .strip_prefix(job.to_string().as_str())
        .and_then(|r| r.strip_prefix('.'))
        .ok_or_else(refuse)?;
    let ext = match rest.split_once('.') {
        None => rest,
        Some((segment, ext)) => {
            let digits =
                (4..=6).contains(&segment.len()) && segment.bytes().all(|b| b.is_ascii_digit());
            if !digits {
                return Err(refuse());
            }
            ext
        }
    };
    if matches!(ext, "flac" | "wav") {
        Ok(())
    } else {
        Err(refuse())
    }
}

/// The `Upload-Checksum` value for a body.
pub fn checksum_header(body: &[u8]) -> String {
    use sha2::Digest;
    format!(
        "sha256 {}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(body))
    )
}

/// The SHA-256 an `Upload-Checksum` value names; `None` if it is not
/// `sha256 <base64 of 32 bytes>`.
pub fn parse_checksum(value: &str) -> Option<[u8; 32]> {
    let (algorithm, encoded) = value.trim().split_once(' ')?;
    if !algorithm.eq_ignore_ascii_case("sha256") {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?
        .try_into()
        .ok()
}

/// The body of `POST …/complete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteUpload {
    /// SHA-256 of the whole file, lower-case hex.
    pub sha256: String,
}

/// The server's answer once it holds the file, verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UploadConfirmation {
    pub job: JobId,
    pub name: String,
    pub bytes: u64,
    /// SHA-256 of the file the server holds, lower-case hex.
    pub sha256: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_names_a_take_of_the_job_has_are_files_of_it() {
        let job = JobId::new(1_000);
        let other = JobId::new(2_000);
        for ok in ["flac", "wav", "0001.flac", "0002.wav", "123456.flac"] {
            let name = format!("{job}.{ok}");
            assert_eq!(check_file_name(job, &name), Ok(()), "{name}");
        }
        for bad in [
            format!("{other}.flac"),
            format!("{job}.mp3"),
            format!("{job}flac"),
            format!("{job}.1.flac"),
            format!("{job}.1234567.flac"),
            format!("{job}.00a1.flac"),
            format!("{job}.0001.flac.part"),
            format!("../{job}.flac"),
            format!("{job}.flac/../../etc"),
            format!("{job}/.flac"),
            format!("{job}.."),
            String::new(),
        ] {
            assert!(check_file_name(job, &bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            file_path(job, &format!("{job}.flac")),
            format!("/api/v1/node/recordings/{job}/files/{job}.flac")
        );
    }

    #[test]
    fn checksums_round_trip_and_refuse_what_is_not_sha256() {
        let header = checksum_header(b"abc");
        assert_eq!(
            header,
            "sha256 ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
        let digest = parse_checksum(&header).unwrap();
        assert_eq!(digest[0], 0xba);
        assert_eq!(
            parse_checksum("SHA256 ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="),
            Some(digest)
        );
        for bad in ["md5 xyz", "sha256", "sha256 !!!", "sha256 YWJj", ""] {
            assert_eq!(parse_checksum(bad), None, "{bad}");
        }
    }
}
