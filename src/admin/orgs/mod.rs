//! The console's organizations pages: every organization with its members,
//! invitations, verified domains and what it shares (buckets, connections,
//! knowledge), and the operator's actions on them (make an owner, remove a
//! member, revoke an invitation, delete the organization). The actions go
//! through the organizations service as its operator, so the owner rule holds,
//! and each writes its audit row and webhook event in the change's transaction.

pub mod db;
pub mod routes;
