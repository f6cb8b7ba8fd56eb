/* io/atomic_file.c: crash-safe writing (see io.h).
 *
 * A file is written where nobody sees it and only put in place, by rename(), after its data reached
 * the disk (fflush, fsync), so PATH holds either the old contents or the complete new ones. rename()
 * is atomic within one file system, which the temporary shares with PATH by living in its folder.
 *
 * Where the file system has them (ext4, xfs, btrfs, tmpfs), the temporary is an unnamed file made
 * with O_TMPFILE: a process that dies, even of SIGKILL, leaves nothing behind, and at commit it gets
 * a random name with linkat() (which fails rather than follow anything planted there) just before
 * the rename. Elsewhere it is PATH.tmp.XXXXXX made by mkostemp, O_EXCL: a random name that never
 * follows a symlink, removed on every error path and on SIGINT, SIGTERM and SIGHUP. Either way it
 * gets the mode a plain open would have given (0666 less the umask), and rename() replaces PATH
 * itself, even when PATH is a symlink, never what it points to.
 *
 * Named temporaries are listed in a small table (the only global state of io/, because a signal
 * handler cannot be given arguments) so that the handler and moe_atomic_file_remove_all() find
 * them. After commit or abort the struct is inert (fp NULL, no temporary), so abort is safe to call
 * on any path out of a writer. */
#include "io/io.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#define PENDING_MAX 64

/* Temporaries to remove on a signal: a slot is written whole before it is marked used. */
static char pending_path[PENDING_MAX][sizeof(((moe_atomic_file_t *)0)->tmp_path)];
static volatile sig_atomic_t pending_used[PENDING_MAX];
static bool handlers_installed;

void moe_atomic_file_remove_all(void)
{
    for (int i = 0; i < PENDING_MAX; i++)
        if (pending_used[i]) {
            unlink(pending_path[i]); /* async-signal-safe */
            pending_used[i] = 0;
        }
}

static void on_signal(int sig)
{
    moe_atomic_file_remove_all();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void install_handlers(void)
{
    if (handlers_installed) return;
    handlers_installed = true;
    const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        struct sigaction old;
        /* a signal the process was told to ignore stays ignored */
        if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN) continue;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(sigs[i], &sa, NULL);
    }
}

static int pending_add(const char *tmp_path)
{
    install_handlers();
    for (int i = 0; i < PENDING_MAX; i++)
        if (!pending_used[i]) {
            snprintf(pending_path[i], sizeof pending_path[i], "%s", tmp_path);
            pending_used[i] = 1;
            return i;
        }
    return -1;
}

static void pending_remove(const char *tmp_path)
{
    for (int i = 0; i < PENDING_MAX; i++)
        if (pending_used[i] && strcmp(pending_path[i], tmp_path) == 0) {
            pending_used[i] = 0;
            return;
        }
}

/* Whether path can be an output: not a directory, its folder present. Logs why not. */
static moe_status_t check_target(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        moe_error("%s: is a directory, not a file to write", path);
        return MOE_STATUS_IO_ERROR;
    }
    char dir[sizeof(((moe_atomic_file_t *)0)->path)];
    snprintf(dir, sizeof dir, "%s", path);
    const char *parent = dirname(dir);
    if (stat(parent, &st) != 0) {
        moe_error("%s: cannot write there: folder %s: %s", path, parent, strerror(errno));
        return MOE_STATUS_IO_ERROR;
    }
    if (!S_ISDIR(st.st_mode)) {
        moe_error("%s: cannot write there: %s is not a folder", path, parent);
        return MOE_STATUS_IO_ERROR;
    }
    return MOE_STATUS_OK;
}

/* An unnamed file in path's folder, or -1 where the file system has none (errno set). */
static int open_anonymous(const char *path)
{
#ifdef O_TMPFILE
    char dir[sizeof(((moe_atomic_file_t *)0)->path)];
    snprintf(dir, sizeof dir, "%s", path);
    return open(dirname(dir), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0666);
#else
    (void)path;
    errno = EOPNOTSUPP;
    return -1;
#endif
}

moe_status_t moe_atomic_file_open(const char *path, moe_atomic_file_t *out)
{
    moe_atomic_file_t file;
    memset(&file, 0, sizeof file);
    if (path == NULL || path[0] == '\0') {
        moe_error("atomic file: empty path");
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    if (strlen(path) >= sizeof file.path) {
        moe_error("%s: path too long", path);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    moe_status_t status = check_target(path);
    if (status != MOE_STATUS_OK) return status;
    strcpy(file.path, path);
    int fd = open_anonymous(path);
    if (fd < 0) { /* a named one */
        snprintf(file.tmp_path, sizeof file.tmp_path, "%s.tmp.XXXXXX", path);
        fd = mkostemp(file.tmp_path, O_CLOEXEC);
        if (fd < 0) {
            moe_error("%s: cannot create a file beside it: %s", path, strerror(errno));
            return MOE_STATUS_IO_ERROR;
        }
        if (pending_add(file.tmp_path) < 0) {
            unlink(file.tmp_path);
            close(fd);
            moe_error("%s: more than %d files open for writing at once", path, PENDING_MAX);
            return MOE_STATUS_INTERNAL;
        }
        mode_t mask = umask(0);
        umask(mask);
        (void)fchmod(fd, 0666 & ~mask);
    }
    file.fp = fdopen(fd, "wb");
    if (file.fp == NULL) {
        int err = errno;
        close(fd);
        if (file.tmp_path[0]) {
            unlink(file.tmp_path);
            pending_remove(file.tmp_path);
        }
        moe_error("%s: cannot open a file beside it: %s", path, strerror(err));
        return MOE_STATUS_IO_ERROR;
    }
    *out = file;
    return MOE_STATUS_OK;
}

/* An unnamed file gets a random name beside path (registered, for the signal handler). */
static moe_status_t link_anonymous(moe_atomic_file_t *file, int fd)
{
    char from[64];
    snprintf(from, sizeof from, "/proc/self/fd/%d", fd);
    for (int attempt = 0; attempt < 64; attempt++) {
        uint64_t r = moe_hash((uint64_t)getpid(), (uint64_t)(moe_now() * 1e9), (uint64_t)fd,
                              (uint64_t)attempt, (uintptr_t)file);
        snprintf(file->tmp_path, sizeof file->tmp_path, "%s.tmp.%012llx", file->path,
                 (unsigned long long)(r & 0xffffffffffffULL));
        if (pending_add(file->tmp_path) < 0) break;
        if (linkat(AT_FDCWD, from, AT_FDCWD, file->tmp_path, AT_SYMLINK_FOLLOW) == 0) return MOE_STATUS_OK;
        int err = errno;
        pending_remove(file->tmp_path);
        if (err != EEXIST) {
            moe_error("%s: cannot name the file written: %s", file->path, strerror(err));
            file->tmp_path[0] = '\0';
            return MOE_STATUS_IO_ERROR;
        }
    }
    moe_error("%s: cannot name the file written", file->path);
    file->tmp_path[0] = '\0';
    return MOE_STATUS_IO_ERROR;
}

moe_status_t moe_atomic_file_check(const char *path)
{
    moe_atomic_file_t file;
    moe_status_t status = moe_atomic_file_open(path, &file);
    if (status == MOE_STATUS_OK) moe_atomic_file_abort(&file);
    return status;
}

/* Make the rename itself durable. Best effort: some file systems refuse fsync on a directory, and
 * the data is already safe under the new name or the old one. */
static void sync_parent_dir(const char *path)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    int fd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    (void)fsync(fd);
    close(fd);
}

moe_status_t moe_atomic_file_commit(moe_atomic_file_t *file)
{
    if (file->fp == NULL) {
        moe_error("%s: atomic file committed twice or never opened", file->path);
        return MOE_STATUS_INVALID_ARGUMENT;
    }
    moe_status_t status = MOE_STATUS_OK;
    FILE *fp = file->fp;
    file->fp = NULL;
    if (fflush(fp) != 0 || ferror(fp))
        MOE_FAIL(MOE_STATUS_IO_ERROR, close_fp, "%s: write failed: %s", file->path, strerror(errno));
    if (fsync(fileno(fp)) != 0)
        MOE_FAIL(MOE_STATUS_IO_ERROR, close_fp, "%s: fsync failed: %s", file->path, strerror(errno));
    if (file->tmp_path[0] == '\0') MOE_CHECK(link_anonymous(file, fileno(fp)), close_fp);
    if (fclose(fp) != 0)
        MOE_FAIL(MOE_STATUS_IO_ERROR, remove_tmp, "%s: close failed: %s", file->path, strerror(errno));
    if (rename(file->tmp_path, file->path) != 0)
        MOE_FAIL(MOE_STATUS_IO_ERROR, remove_tmp, "%s: cannot put the file in place: %s", file->path,
                 strerror(errno));
    pending_remove(file->tmp_path);
    file->tmp_path[0] = '\0';
    sync_parent_dir(file->path);
    return MOE_STATUS_OK;

close_fp:
    fclose(fp);
remove_tmp:
    if (file->tmp_path[0] != '\0') {
        unlink(file->tmp_path);
        pending_remove(file->tmp_path);
        file->tmp_path[0] = '\0';
    }
    return status;
}

void moe_atomic_file_abort(moe_atomic_file_t *file)
{
    if (file == NULL) return;
    if (file->fp != NULL) {
        fclose(file->fp); /* an unnamed file goes with its last descriptor */
        file->fp = NULL;
    }
    if (file->tmp_path[0] != '\0') {
        unlink(file->tmp_path);
        pending_remove(file->tmp_path);
        file->tmp_path[0] = '\0';
    }
}
