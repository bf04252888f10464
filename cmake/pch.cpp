// Compiles the precompiled header that every trainloop target reuses.
