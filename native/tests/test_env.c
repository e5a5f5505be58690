/*
 * test_env.c - sio_env_configure: the SPDK environment options are checked
 * the same way in every build; a build without SPDK then says ENOTSUP.
 * (Starting the environment is covered by test_spdk.c, against a target.)
 */
#include <errno.h>

#include "util.h"

TEST(env_configure_bad_options_named)
{
    CHECK_RC(sio_env_configure("hugepages=2"), -EINVAL);
    CHECK_DETAIL("'hugepages'");
    CHECK_RC(sio_env_configure("mem_size_mb=lots"), -EINVAL);
    CHECK_DETAIL("'lots'");
    CHECK_RC(sio_env_configure("iova_mode=xx"), -EINVAL);
    CHECK_DETAIL("va or pa");
    CHECK_RC(sio_env_configure("core_mask=0x0"), -EINVAL);
    CHECK_DETAIL("core_mask");
    CHECK_RC(sio_env_configure("core_mask=zz"), -EINVAL);
    CHECK_RC(sio_env_configure("shm_id=-2"), -EINVAL);
    CHECK_RC(sio_env_configure("pci=yes"), -EINVAL);
    CHECK_RC(sio_env_configure("colour=blue"), -EINVAL);
    CHECK_DETAIL("unknown SPDK environment option 'colour'");
    CHECK_RC(sio_env_configure("hugepages=0&hugepages=1"), -EINVAL);
    CHECK_DETAIL("duplicate option 'hugepages'");
    CHECK_RC(sio_env_configure("hugepages=0&iova_mode=pa"), -EINVAL);
    CHECK_DETAIL("iova_mode=pa needs hugepages");
    CHECK_RC(sio_env_configure("hugepages"), -EINVAL);
}

TEST(env_configure_valid_options_by_build)
{
    const char *opts = "hugepages=0&mem_size_mb=256&iova_mode=va&core_mask=0x3&shm_id=-1&pci=0";
#ifdef STRATA_HAVE_SPDK
    /* Nothing has started the environment in this process: the options are kept for later. */
    CHECK_OK(sio_env_configure(NULL));
    CHECK_OK(sio_env_configure(opts));
    CHECK_OK(sio_env_configure(""));
#else
    CHECK_RC(sio_env_configure(NULL), -ENOTSUP);
    CHECK_DETAIL("without SPDK");
    CHECK_RC(sio_env_configure(opts), -ENOTSUP);
    CHECK_DETAIL("built without SPDK");
    CHECK_RC(sio_env_configure(""), -ENOTSUP);
#endif
}
