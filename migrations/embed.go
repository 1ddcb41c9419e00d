// Package migrations embeds baton's goose SQL migrations so every binary carries
// the schema it was built for.
package migrations

import "embed"

// FS holds the *.sql migrations, named NNNNN_name.sql so lexical order is numeric order.
//
//go:embed *.sql
var FS embed.FS
