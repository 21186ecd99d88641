// Command foreigndb writes a bbolt file of some other program, for mqttd's
// tests of what it does with a foreign file at its history path.
package main

import (
	"os"

	bolt "go.etcd.io/bbolt"
)

func main() {
	db, err := bolt.Open(os.Args[1], 0o600, nil)
	if err != nil {
		panic(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("someone else's")); return err }); err != nil {
		panic(err)
	}
}
