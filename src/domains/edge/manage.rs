//! manage (in progress).
