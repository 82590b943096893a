//! Entry points for the fuzz targets (`fuzz/`) into parsers that are
//! otherwise the supervisor's own.

/// Parse an sd_notify datagram the two ways the supervisor reads one.
pub fn notify(text: &str) {
    let _ = crate::notify::parse(text);
    let _ = crate::handover::store_op(text);
}
