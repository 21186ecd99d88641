package client

// SetIDGenerator makes clients dialled with cfg generate message ids with f.
func SetIDGenerator(cfg *Config, f func() string) {
	if cfg.hooks == nil {
		cfg.hooks = &testHooks{}
	}
	cfg.hooks.newMessageID = f
}
