//! The one place that calls libFLAC (libflac-sys, bundled libFLAC 1.5).
//!
//! Two safe types wrap the C API: [`RawEncoder`] (a stream encoder writing to any
//! `Write`) and [`FlacReader`] (a decoder of a file or of any `Read`, handing out
//! interleaved blocks).
//!
//! Invariants the unsafe code relies on:
//! - The client state behind libFLAC's `client_data` pointer is a leaked `Box`
//!   owned by the wrapper; it is reached only through that raw pointer (never
//!   through a `&mut` held across a libFLAC call) and freed in `Drop` after the
//!   encoder/decoder is deleted, so callbacks never see a dangling pointer.
//! - libFLAC calls our callbacks only from inside the call we made (single
//!   threaded encoder/decoder), so a callback's `&mut` to the client state never
//!   overlaps another.
//! - Callbacks do not panic across the FFI boundary: they only copy bytes and
//!   record errors; the caller's `Read` behind the read callback runs under
//!   `catch_unwind`, gets a zeroed (initialised) buffer, and a count it
//!   returns beyond that buffer is refused.

#![allow(unsafe_code)] // the FFI boundary to libFLAC; audited as described above

use std::ffi::{CStr, CString, c_char, c_void};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;

use libflac_sys as sys;

use crate::FlacError;

/// A string from one of libFLAC's `…String` tables.
fn table_string(table: *const *const c_char, index: u32) -> String {
    // SAFETY: libFLAC's tables have an entry for every value of their enum, and
    // `index` comes from libFLAC itself.
    unsafe {
        let s = *table.add(index as usize);
        if s.is_null() {
            return format!("state {index}");
        }
        CStr::from_ptr(s).to_string_lossy().into_owned()
    }
}

/// What libFLAC reports at the end of an encoding (its final STREAMINFO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Finished {
    pub total_samples: u64,
    pub md5: [u8; 16],
}

struct EncoderClient<W> {
    out: W,
    finished: Option<Finished>,
}

/// Encoder settings libFLAC needs before it starts.
pub(crate) struct EncoderSettings {
    pub channels: u32,
    pub bits_per_sample: u32,
    pub sample_rate: u32,
    pub compression_level: u32,
}

/// A libFLAC stream encoder writing its output to `W`.
///
/// libFLAC computes the stream's MD5 itself and reports it with the final
/// STREAMINFO from [`RawEncoder::finish`]; with no seek callback it never
/// rewrites the header, which stays ours.
pub(crate) struct RawEncoder<W: Write> {
    encoder: NonNull<sys::FLAC__StreamEncoder>,
    client: NonNull<EncoderClient<W>>,
}

unsafe extern "C" fn encoder_write<W: Write>(
    _encoder: *const sys::FLAC__StreamEncoder,
    buffer: *const sys::FLAC__byte,
    bytes: usize,
    _samples: u32,
    _current_frame: u32,
    client_data: *mut c_void,
) -> sys::FLAC__StreamEncoderWriteStatus {
    // SAFETY: client_data is the EncoderClient<W> we registered; buffer holds
    // `bytes` bytes for the duration of the call.
    let (client, data) = unsafe {
        (
            &mut *client_data.cast::<EncoderClient<W>>(),
            std::slice::from_raw_parts(buffer, bytes),
        )
    };
    match client.out.write_all(data) {
        Ok(()) => sys::FLAC__STREAM_ENCODER_WRITE_STATUS_OK,
        Err(_) => sys::FLAC__STREAM_ENCODER_WRITE_STATUS_FATAL_ERROR,
    }
}

unsafe extern "C" fn encoder_metadata<W: Write>(
    _encoder: *const sys::FLAC__StreamEncoder,
    metadata: *const sys::FLAC__StreamMetadata,
    client_data: *mut c_void,
) {
    // SAFETY: as in encoder_write; libFLAC passes a valid STREAMINFO block.
    unsafe {
        let client = &mut *client_data.cast::<EncoderClient<W>>();
        let metadata = &*metadata;
        if metadata.type_ == sys::FLAC__METADATA_TYPE_STREAMINFO {
            let info = metadata.data.stream_info;
            client.finished = Some(Finished {
                total_samples: info.total_samples,
                md5: info.md5sum,
            });
        }
    }
}

impl<W: Write> RawEncoder<W> {
    /// Configure an encoder that will write to `out`.
    pub fn new(settings: &EncoderSettings, out: W) -> Result<RawEncoder<W>, FlacError> {
        // SAFETY: a fresh encoder is configured before init, as libFLAC requires.
        let encoder = NonNull::new(unsafe { sys::FLAC__stream_encoder_new() })
            .ok_or_else(|| FlacError::Encoder("cannot allocate an encoder".into()))?;
        let client = NonNull::from(Box::leak(Box::new(EncoderClient {
            out,
            finished: None,
        })));
        let raw = RawEncoder { encoder, client };
        let e = encoder.as_ptr();
        // FLAC's streamable subset stops at 24 bits per sample.
        let subset = settings.bits_per_sample <= 24;
        // SAFETY: `e` is a valid, uninitialised encoder.
        let configured = unsafe {
            sys::FLAC__stream_encoder_set_channels(e, settings.channels) != 0
                && sys::FLAC__stream_encoder_set_bits_per_sample(e, settings.bits_per_sample) != 0
                && sys::FLAC__stream_encoder_set_sample_rate(e, settings.sample_rate) != 0
                && sys::FLAC__stream_encoder_set_compression_level(e, settings.compression_level)
                    != 0
                && sys::FLAC__stream_encoder_set_streamable_subset(e, i32::from(subset)) != 0
                && sys::FLAC__stream_encoder_set_verify(e, 0) != 0
        };
        if !configured {
            return Err(FlacError::Encoder("libFLAC refused the settings".into()));
        }
        Ok(raw)
    }

    /// Start encoding: libFLAC writes the stream header to the output before
    /// this returns. On failure, libFLAC's reason (the output may hold a write
    /// error that explains it).
    pub fn init(&mut self) -> Result<(), String> {
        // SAFETY: callbacks match libFLAC's signatures; the client outlives the
        // encoder; init runs once on a configured encoder.
        let status = unsafe {
            sys::FLAC__stream_encoder_init_stream(
                self.encoder.as_ptr(),
                Some(encoder_write::<W>),
                None,
                None,
                Some(encoder_metadata::<W>),
                self.client.as_ptr().cast(),
            )
        };
        if status == sys::FLAC__STREAM_ENCODER_INIT_STATUS_OK {
            return Ok(());
        }
        let table = std::ptr::addr_of!(sys::FLAC__StreamEncoderInitStatusString);
        Err(table_string(table.cast(), status))
    }

    /// Encode `frames` frames of interleaved, right-justified samples.
    /// `false` means the encoder failed (see [`RawEncoder::state`]).
    pub fn process_interleaved(&mut self, samples: &[i32], frames: u32) -> bool {
        debug_assert!(samples.len() >= frames as usize);
        // SAFETY: `samples` holds at least `frames` × channels values.
        unsafe {
            sys::FLAC__stream_encoder_process_interleaved(
                self.encoder.as_ptr(),
                samples.as_ptr(),
                frames,
            ) != 0
        }
    }

    /// Flush the last block; on success, what libFLAC reports for the stream.
    pub fn finish(&mut self) -> Option<Finished> {
        // SAFETY: valid encoder; finishing twice is allowed by libFLAC.
        let ok = unsafe { sys::FLAC__stream_encoder_finish(self.encoder.as_ptr()) } != 0;
        // SAFETY: no libFLAC call is running.
        let finished = unsafe { self.client.as_ref() }.finished;
        ok.then_some(finished).flatten()
    }

    /// libFLAC's description of the encoder state.
    pub fn state(&self) -> String {
        // SAFETY: valid encoder; the table covers every state.
        unsafe {
            let state = sys::FLAC__stream_encoder_get_state(self.encoder.as_ptr());
            let table = std::ptr::addr_of!(sys::FLAC__StreamEncoderStateString);
            table_string(table.cast(), state)
        }
    }

    /// The output, between libFLAC calls.
    pub fn output(&mut self) -> &mut W {
        // SAFETY: no libFLAC call is running while `&mut self` is held.
        unsafe { &mut self.client.as_mut().out }
    }
}

impl<W: Write> Drop for RawEncoder<W> {
    fn drop(&mut self) {
        // SAFETY: delete the encoder first (it may call back while finishing),
        // then free the client it pointed to.
        unsafe {
            sys::FLAC__stream_encoder_delete(self.encoder.as_ptr());
            drop(Box::from_raw(self.client.as_ptr()));
        }
    }
}

/// A FLAC stream's format, as its STREAMINFO states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamFormat {
    pub channels: u8,
    pub bits_per_sample: u8,
    pub sample_rate: u32,
    /// 0 when the header does not know (an unfinished file).
    pub total_samples: u64,
}

#[derive(Default)]
struct DecoderClient {
    format: Option<StreamFormat>,
    /// The last decoded block, interleaved.
    block: Vec<i32>,
    error: Option<String>,
    /// Where the stream's bytes come from, when not a file libFLAC opens.
    source: Option<Box<dyn Read + Send>>,
}

unsafe extern "C" fn decoder_read(
    _decoder: *const sys::FLAC__StreamDecoder,
    buffer: *mut sys::FLAC__byte,
    bytes: *mut usize,
    client_data: *mut c_void,
) -> sys::FLAC__StreamDecoderReadStatus {
    // SAFETY: client_data is our DecoderClient; libFLAC gives a buffer of
    // `*bytes` writable bytes and reads back how many we filled.
    unsafe {
        let client = &mut *client_data.cast::<DecoderClient>();
        let want = *bytes;
        *bytes = 0;
        let Some(source) = client.source.as_mut() else {
            return sys::FLAC__STREAM_DECODER_READ_STATUS_ABORT;
        };
        // libFLAC's buffer may be uninitialised memory, which a `&mut [u8]`
        // must not be: zero it first (a few KiB per call).
        std::ptr::write_bytes(buffer, 0, want);
        let buf = std::slice::from_raw_parts_mut(buffer, want);
        // The source is caller code: a panic must not unwind into libFLAC.
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            loop {
                match source.read(buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    other => return other,
                }
            }
        }));
        match read {
            Ok(Ok(0)) => sys::FLAC__STREAM_DECODER_READ_STATUS_END_OF_STREAM,
            // A `Read` may not claim more than it was given; libFLAC would
            // read past its buffer.
            Ok(Ok(n)) if n > want => {
                client
                    .error
                    .get_or_insert_with(|| format!("the source claimed {n} of {want} bytes"));
                sys::FLAC__STREAM_DECODER_READ_STATUS_ABORT
            }
            Ok(Ok(n)) => {
                *bytes = n;
                sys::FLAC__STREAM_DECODER_READ_STATUS_CONTINUE
            }
            Ok(Err(e)) => {
                client.error.get_or_insert_with(|| format!("reading: {e}"));
                sys::FLAC__STREAM_DECODER_READ_STATUS_ABORT
            }
            Err(_) => {
                client
                    .error
                    .get_or_insert_with(|| "the source panicked".to_owned());
                sys::FLAC__STREAM_DECODER_READ_STATUS_ABORT
            }
        }
    }
}

unsafe extern "C" fn decoder_write(
    _decoder: *const sys::FLAC__StreamDecoder,
    frame: *const sys::FLAC__Frame,
    buffer: *const *const sys::FLAC__int32,
    client_data: *mut c_void,
) -> sys::FLAC__StreamDecoderWriteStatus {
    // SAFETY: client_data is our DecoderClient; `buffer` has one array of
    // `blocksize` samples per channel of the frame.
    unsafe {
        let client = &mut *client_data.cast::<DecoderClient>();
        let header = &(*frame).header;
        let (n, channels) = (header.blocksize as usize, header.channels as usize);
        client.block.clear();
        client.block.resize(n * channels, 0);
        for c in 0..channels {
            let plane = std::slice::from_raw_parts(*buffer.add(c), n);
            for (slot, &s) in client.block[c..].iter_mut().step_by(channels).zip(plane) {
                *slot = s;
            }
        }
    }
    sys::FLAC__STREAM_DECODER_WRITE_STATUS_CONTINUE
}

unsafe extern "C" fn decoder_metadata(
    _decoder: *const sys::FLAC__StreamDecoder,
    metadata: *const sys::FLAC__StreamMetadata,
    client_data: *mut c_void,
) {
    // SAFETY: as in decoder_write; libFLAC passes a valid metadata block.
    unsafe {
        let client = &mut *client_data.cast::<DecoderClient>();
        let metadata = &*metadata;
        if metadata.type_ == sys::FLAC__METADATA_TYPE_STREAMINFO {
            let info = metadata.data.stream_info;
            client.format = Some(StreamFormat {
                channels: info.channels as u8,
                bits_per_sample: info.bits_per_sample as u8,
                sample_rate: info.sample_rate,
                total_samples: info.total_samples,
            });
        }
    }
}

unsafe extern "C" fn decoder_error(
    _decoder: *const sys::FLAC__StreamDecoder,
    status: sys::FLAC__StreamDecoderErrorStatus,
    client_data: *mut c_void,
) {
    // SAFETY: as in decoder_write.
    unsafe {
        let client = &mut *client_data.cast::<DecoderClient>();
        if client.error.is_none() {
            let table = std::ptr::addr_of!(sys::FLAC__StreamDecoderErrorStatusString);
            client.error = Some(table_string(table.cast(), status));
        }
    }
}

/// Reads a FLAC file block by block. Any stream error (lost sync, a CRC
/// mismatch, an unparseable frame) is an error, never silently replaced audio.
pub struct FlacReader {
    decoder: NonNull<sys::FLAC__StreamDecoder>,
    client: NonNull<DecoderClient>,
    format: StreamFormat,
    path: String,
}

impl FlacReader {
    /// Decode the file at `path`.
    pub fn open(path: &Path) -> Result<FlacReader, FlacError> {
        let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| FlacError::Decode {
            path: path.display().to_string(),
            detail: "NUL in the path".into(),
        })?;
        FlacReader::init(path.display().to_string(), None, |decoder, client| {
            // SAFETY: a fresh decoder, initialised once with valid callbacks;
            // the client outlives the decoder.
            unsafe {
                sys::FLAC__stream_decoder_init_file(
                    decoder,
                    c_path.as_ptr(),
                    Some(decoder_write),
                    Some(decoder_metadata),
                    Some(decoder_error),
                    client,
                )
            }
        })
    }

    /// Decode the stream `source` gives, read front to back (no seeking);
    /// `name` names it in errors. A read that blocks holds the decoder, so a
    /// source may hand out a file as it grows.
    pub fn from_read(
        name: &str,
        source: impl Read + Send + 'static,
    ) -> Result<FlacReader, FlacError> {
        FlacReader::init(
            name.to_owned(),
            Some(Box::new(source)),
            |decoder, client| {
                // SAFETY: as in `open`; the read callback is the only way in.
                unsafe {
                    sys::FLAC__stream_decoder_init_stream(
                        decoder,
                        Some(decoder_read),
                        None,
                        None,
                        None,
                        None,
                        Some(decoder_write),
                        Some(decoder_metadata),
                        Some(decoder_error),
                        client,
                    )
                }
            },
        )
    }

    fn init(
        path: String,
        source: Option<Box<dyn Read + Send>>,
        init: impl FnOnce(
            *mut sys::FLAC__StreamDecoder,
            *mut c_void,
        ) -> sys::FLAC__StreamDecoderInitStatus,
    ) -> Result<FlacReader, FlacError> {
        let fail = |detail: String| FlacError::Decode {
            path: path.clone(),
            detail,
        };
        // SAFETY: allocating a decoder has no precondition.
        let decoder = NonNull::new(unsafe { sys::FLAC__stream_decoder_new() })
            .ok_or_else(|| fail("cannot allocate a decoder".into()))?;
        let client = NonNull::from(Box::leak(Box::new(DecoderClient {
            source,
            ..DecoderClient::default()
        })));
        let mut reader = FlacReader {
            decoder,
            client,
            format: StreamFormat {
                channels: 0,
                bits_per_sample: 0,
                sample_rate: 0,
                total_samples: 0,
            },
            path: path.clone(),
        };
        let status = init(decoder.as_ptr(), client.as_ptr().cast());
        if status != sys::FLAC__STREAM_DECODER_INIT_STATUS_OK {
            let table = std::ptr::addr_of!(sys::FLAC__StreamDecoderInitStatusString);
            return Err(fail(table_string(table.cast(), status)));
        }
        // SAFETY: initialised decoder.
        let ok =
            unsafe { sys::FLAC__stream_decoder_process_until_end_of_metadata(decoder.as_ptr()) };
        // SAFETY: no libFLAC call is running.
        let client = unsafe { reader.client.as_mut() };
        if ok == 0 || client.error.is_some() {
            return Err(fail(client.error.take().unwrap_or_else(|| reader.state())));
        }
        reader.format = client.format.ok_or_else(|| fail("no STREAMINFO".into()))?;
        Ok(reader)
    }

    pub fn format(&self) -> StreamFormat {
        self.format
    }

    /// The next block of interleaved samples (right-justified), or `None` at
    /// the end of the stream.
    pub fn next_block(&mut self) -> Result<Option<&[i32]>, FlacError> {
        // SAFETY: no libFLAC call is running.
        unsafe { self.client.as_mut() }.block.clear();
        loop {
            // SAFETY: initialised decoder.
            let state = unsafe { sys::FLAC__stream_decoder_get_state(self.decoder.as_ptr()) };
            if state == sys::FLAC__STREAM_DECODER_END_OF_STREAM {
                return Ok(None);
            }
            // SAFETY: as above.
            let ok = unsafe { sys::FLAC__stream_decoder_process_single(self.decoder.as_ptr()) };
            // SAFETY: the call has returned.
            let client = unsafe { self.client.as_mut() };
            if ok == 0 || client.error.is_some() {
                let detail = client.error.take().unwrap_or_else(|| self.state());
                return Err(FlacError::Decode {
                    path: self.path.clone(),
                    detail,
                });
            }
            // SAFETY: the call has returned; the block lives until the next call.
            let client = unsafe { self.client.as_ref() };
            if !client.block.is_empty() {
                return Ok(Some(&client.block));
            }
        }
    }

    fn state(&self) -> String {
        // SAFETY: valid decoder; the table covers every state.
        unsafe {
            let state = sys::FLAC__stream_decoder_get_state(self.decoder.as_ptr());
            let table = std::ptr::addr_of!(sys::FLAC__StreamDecoderStateString);
            table_string(table.cast(), state)
        }
    }
}

impl Drop for FlacReader {
    fn drop(&mut self) {
        // SAFETY: delete the decoder, then the client it pointed to.
        unsafe {
            sys::FLAC__stream_decoder_delete(self.decoder.as_ptr());
            drop(Box::from_raw(self.client.as_ptr()));
        }
    }
}
