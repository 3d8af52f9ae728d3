//! packages (in progress).
