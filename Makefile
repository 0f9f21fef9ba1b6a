# The two commands of the README, and the pieces they are made of.
.PHONY: demo test build bootstrap wheel

demo:        ## install everything, run gpulet on a simulated DGX H100
	scripts/demo

test:        ## install everything, run every test tier
	scripts/test

bootstrap:
	scripts/bootstrap

build: bootstrap
	scripts/build

wheel: bootstrap
	scripts/build wheel
