//! Tests of the download client against the real double (`fake-creodias`).
