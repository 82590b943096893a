//! Entry points for the fuzz targets (`fuzz/`) into parsers that are
//! otherwise the supervisor's own.

/// Parse an sd_notify datagram the two ways the supervisor reads one.
pub fn notify(text: &str) {
    let _ = crate::readiness::notify_socket::parse(text);
    let _ = crate::readiness::store_op(text);
}
