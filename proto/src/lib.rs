//! Versioned, length-prefixed frames between the silo host and its guest agent.
