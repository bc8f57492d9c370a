//! amqp adapter (in progress).
