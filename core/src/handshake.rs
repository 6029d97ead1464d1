//! (handshake: in progress)
