//! hostile (in progress).
