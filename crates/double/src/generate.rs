//! Test product generator (placeholder).
