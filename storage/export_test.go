package storage

// CloseFile closes the bbolt file under a running store, so that every
// further commit fails; for the tests of package storage_test.
func CloseFile(s Store) error { return s.(*Bolt).db.Close() }
