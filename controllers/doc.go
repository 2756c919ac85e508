// Package controllers holds keymint's reconcilers: one for ApiTokens (mint,
// store, expire, revoke, rotate) and one for ServiceUsers (status, and
// revoking tokens when a user is disabled or deleted).
package controllers

// The manager watches both kinds from its first version on.
// +kubebuilder:rbac:groups=keymint.io,resources=serviceusers;apitokens,verbs=get;list;watch
