/*
 * Berth's pod sandbox ("pause") process, the first process of every Kubernetes pod. It holds
 * the pod's namespaces open while the pod's containers come and go, reaps the zombies those
 * containers leave behind (it is PID 1 of the pod when the pod shares its PID namespace), and
 * exits cleanly when the runtime stops the sandbox.
 *
 * os-build compiles it statically (gcc -static, glibc) for the image's architecture and packs
 * it into a one-layer OCI image (os-build/src/pause.rs); containerd imports that image at
 * boot and uses it as its sandbox_image, so no node pulls a pause image from a registry.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* SIGINT, SIGTERM: the runtime stops the sandbox. */
static void stop(int sig)
{
	(void)sig;
	_exit(0);
}

/* SIGCHLD: collect every exited child, keeping errno for the interrupted call. */
static void reap(int sig)
{
	int saved = errno;
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	errno = saved;
}

int main(int argc, char **argv)
{
	struct sigaction sa;

	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		puts("berth-pause 1");
		return 0;
	}
	if (getpid() != 1)
		fputs("berth-pause: not PID 1; zombies of other processes are not reaped\n", stderr);

	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = stop;
	if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0) {
		perror("berth-pause: sigaction");
		return 1;
	}
	sa.sa_handler = reap;
	sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
	if (sigaction(SIGCHLD, &sa, NULL) != 0) {
		perror("berth-pause: sigaction");
		return 1;
	}
	for (;;)
		pause();
}
