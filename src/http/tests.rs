//! In-process tests of the HTTP edge.
