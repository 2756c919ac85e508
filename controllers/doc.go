// Package controllers holds keymint's reconcilers: one for ApiTokens (mint,
// store, expire, revoke, rotate, each mint only for a requester who may),
// one for restart targets (roll workloads onto a new token, for the user who
// named them), and one for ServiceUsers (status, and removing tokens when a
// user is deleted).
package controllers
