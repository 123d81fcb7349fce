//! The queue side, along the data path: the [`manager`] schedules spooled messages and
//! delivers them ([`route`] decides where each recipient goes), [`admin`] answers
//! `postrider queue` online and offline.

pub mod admin;
pub mod manager;
pub mod route;
