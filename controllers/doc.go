// Package controllers holds keymint's reconcilers: one for ApiTokens (mint,
// store, expire, revoke, rotate) and one for ServiceUsers (status, and
// removing tokens when a user is deleted).
package controllers
