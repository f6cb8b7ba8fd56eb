/* io/atomic_file.c: crash-safe writing (see io.h).
 *
 * A file is written to PATH.tmp.<pid> and only renamed onto PATH after its data reached the disk
 * (fflush, fsync, fclose), so PATH holds either the old contents or the complete new ones. rename()
 * is atomic within one file system, which the temporary shares with PATH by living beside it. After
 * commit or abort the struct is inert (fp NULL, no temporary), so abort is safe to call on any path
 * out of a writer. */
#include "io/io.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

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
    strcpy(file.path, path);
    snprintf(file.tmp_path, sizeof file.tmp_path, "%s.tmp.%ld", path, (long)getpid());
    file.fp = fopen(file.tmp_path, "wb");
    if (file.fp == NULL) {
        moe_error("%s: cannot create %s: %s", path, file.tmp_path, strerror(errno));
        return MOE_STATUS_IO_ERROR;
    }
    *out = file;
    return MOE_STATUS_OK;
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
        MOE_FAIL(MOE_STATUS_IO_ERROR, close_fp, "%s: write failed: %s", file->tmp_path, strerror(errno));
    if (fsync(fileno(fp)) != 0)
        MOE_FAIL(MOE_STATUS_IO_ERROR, close_fp, "%s: fsync failed: %s", file->tmp_path, strerror(errno));
    if (fclose(fp) != 0)
        MOE_FAIL(MOE_STATUS_IO_ERROR, remove_tmp, "%s: close failed: %s", file->tmp_path,
                 strerror(errno));
    if (rename(file->tmp_path, file->path) != 0)
        MOE_FAIL(MOE_STATUS_IO_ERROR, remove_tmp, "%s: cannot rename %s onto it: %s", file->path,
                 file->tmp_path, strerror(errno));
    file->tmp_path[0] = '\0';
    sync_parent_dir(file->path);
    return MOE_STATUS_OK;

close_fp:
    fclose(fp);
remove_tmp:
    unlink(file->tmp_path);
    file->tmp_path[0] = '\0';
    return status;
}

void moe_atomic_file_abort(moe_atomic_file_t *file)
{
    if (file == NULL) return;
    if (file->fp != NULL) {
        fclose(file->fp);
        file->fp = NULL;
    }
    if (file->tmp_path[0] != '\0') {
        unlink(file->tmp_path);
        file->tmp_path[0] = '\0';
    }
}
