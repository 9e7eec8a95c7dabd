//! Redfish: a thin typed client over HTTP(S).
