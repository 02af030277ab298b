module github.com/smolbottle/smolbottle/verify

go 1.26

require (
	github.com/BurntSushi/toml v1.5.0
	github.com/containers/gvisor-tap-vsock v0.8.9
	gopkg.in/yaml.v3 v3.0.1
)
