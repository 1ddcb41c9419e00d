package migrate

import (
	"io/fs"
	"strconv"
	"strings"

	"github.com/baton-scheduler/baton/migrations"
)

// LatestEmbedded is the newest migration version embedded in the binary, read
// from the file names (NNNNN_name.sql) without opening a database: what a
// readiness check compares the database's version with.
func LatestEmbedded() int64 {
	names, _ := fs.Glob(migrations.FS, "*.sql")
	var latest int64
	for _, n := range names {
		v, err := strconv.ParseInt(strings.SplitN(n, "_", 2)[0], 10, 64)
		if err == nil && v > latest {
			latest = v
		}
	}
	return latest
}
