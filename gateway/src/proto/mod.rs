//! Wire protocols. Codecs only: no routing, no sockets beyond the streams handed in.

pub mod date;
pub mod h1;
pub mod path;
pub mod percent;
pub mod x509_name;
