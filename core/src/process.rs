//! (process: in progress)
